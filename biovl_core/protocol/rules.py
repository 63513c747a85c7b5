"""The rules table: what a line is by its own text (note, expected result, parameter, label, heading, meta), each rule with the reason `--explain` prints.

A new writing style is usually a new row here. ``LINE_RULES`` apply to any line (marked or
not) once its list marker is removed; ``BLOCK_RULES`` only where a parameter block is open
(after a label such as "Program:", under a step that ends with ":", or nested under a step),
because on their own lines such as "10 µl of primer into the tube" are steps. ``REASONS`` holds
the reasons of the decisions made from the document's structure rather than one line's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from biovl_core.protocol.prose import LAB_VERBS, is_cjk

# Classes a line can get; `biovl protocol --explain` prints one per line.
CLASSES = (
    "title",
    "heading",
    "step",
    "sub-step",
    "detail",
    "note",
    "expected",
    "parameter",
    "material",
    "meta",
    "other",
    "skip",
)


@dataclass(frozen=True)
class Rule:
    """One line rule: lines whose text matches ``pattern`` get ``cls``, for ``reason``."""

    name: str
    cls: str
    pattern: re.Pattern[str]
    reason: str
    unless_action: bool = False  # the rule does not apply to a line that reads as an action
    gate: str = ""  # tried only on lines that contain this text (a cheap filter)


def _rx(pattern: str, flags: int = re.IGNORECASE) -> re.Pattern[str]:
    return re.compile(pattern, flags | re.VERBOSE)


_TEMP = r"-?\d+(?:\.\d+)?(?:\s*[-–~]\s*\d+(?:\.\d+)?)?\s*(?:°\s*C|℃|ºC|°)"
_UNIT = (
    r"(?:µl|μl|ul|ml|l|nl|mg|g|kg|µg|μg|ug|ng|pg|mm|µm|μm|nm|m|mol|mmol|%|x|×|u|units?|"
    r"volumes?|vols?|µL|μL|uL|mL|L)"
)
_DURATION = r"\d+(?:[.,]\d+)?\s*(?:-|–|to)?\s*\d*\s*(?:h|hrs?|hours?|min|mins?|minutes?|s|sec|secs?|seconds?|m|分間?|秒間?|時間|小时|分钟|秒)"

LINE_RULES: tuple[Rule, ...] = (
    Rule(
        "markdown-rule",
        "skip",
        _rx(r"^(?:(?:-\s*){3,}|(?:\*\s*){3,}|(?:_\s*){3,}|(?:=\s*){3,}|[─━═—]{3,})$"),
        "a rule line (---, ***, ===, ───) draws, it says nothing",
    ),
    Rule(
        "markup",
        "skip",
        _rx(r"^(?:<!--.*?-->|</?(?:br|p|div|details|summary|hr|span|center)\b[^>]*>|```.*|~~~.*)$"),
        "HTML or code-fence markup, not protocol text",
    ),
    Rule(
        "note",
        "note",
        _rx(
            r"""^[\s>!?▲■⚠△*_(\[【「]*(?:
            (?i:notes?|nb|n\.b\.|caution|warning|critical(?:\s+step)?|tips?|hint|pause\s+point
               |important|attention)\s*(?:\*\*|__)?\s*[:：\-–—!)\]】]
          | (?-i:NOTE|CAUTION|WARNING|CRITICAL(?:\ STEP)?|PAUSE\ POINT|TIP|IMPORTANT|TROUBLESHOOTING)\b
          | (?i:pause\s+point)\b
          | ※
          | (?:注意事項|注意点|注意|注|ポイント|メモ|備考|重要|警告|ヒント|コツ|注意事项|提示|小贴士)\s*[:：】\])）]
        )""",
            0,
        ),
        "a note mark (Note:, Caution:, CRITICAL STEP, ※, 注意：...): it belongs to a step",
    ),
    Rule(
        "safety-note",
        "note",
        _rx(
            r"""^[*_]*(?:safety|hazards?|precautions?|remarks?|comments?|troubleshooting|tips?\s+and\s+tricks
               |安全|危険|注意事项|安全提示|备注)[*_]*\s*[:：]\s*\S"""
        ),
        "a safety or remark label with its text on the same line: a note, never step text",
    ),
    Rule(
        "arrow-remark",
        "note",
        _rx(r"^(?:->|→|=>|⇒|⟶)\s*\S"),
        "a remark after an arrow (-> yield checked later), as lab notebooks write them: a note",
    ),
    Rule(
        "note-label",
        "note",
        _rx(
            r"""^[*_]*(?:note|caution|warning|critical|critical\s+step|tip|hint|important|attention
               |safety\s+information|expected\s+result|pause\s+point|注意|注|ポイント|提示)[*_]*[:：]?$"""
        ),
        "a note label alone on its line (Note, Caution, Expected result): the lines under it are the note",
    ),
    Rule(
        "expected",
        "expected",
        _rx(
            r"""^[*_]*(?:expected\s+(?:results?|outcomes?|output)|anticipated\s+results?|results?
               |checkpoint|expected|you\s+should\s+see|予想される結果|期待される結果|結果|確認
               |预期结果|结果|预期)[*_]*\s*[:：]"""
        ),
        "an expected result (Expected result:, Checkpoint:, 結果：): kept with its step",
    ),
    Rule(
        "timing",
        "parameter",
        _rx(
            r"""^(?:[*_(]*(?:(?:estimated\s+|total\s+|hands-on\s+)?(?:timing|time|duration)(?:\s+needed|\s+required)?
               |time\s+required|所要時間|時間|时间|耗时|用时)[*_]*\s*[:：]?\s*(?:\d|~|approx|about|ca\.|overnight|[0-9０-９]))"""
        ),
        "a timing (Timing:, Duration needed:, TIMING 2 h): a detail of its step",
    ),
    Rule(
        "heading-timing",
        "parameter",
        _rx(r"^.{0,80}?[●•]\s*TIMING\b", 0),
        "a heading with its timing (Cell lysis ● TIMING 30 min): a detail of the steps under it",
        gate="TIMING",
    ),
    Rule(
        "bare-duration",
        "parameter",
        _rx(
            rf"^[(（]?\s*(?:~|ca\.\s*|about\s+)?(?:{_DURATION}|\d{{1,2}}:\d{{2}}:\d{{2}})\s*[)）]?$"
        ),
        "a duration alone on its line: a detail of its step",
    ),
    Rule(
        "setting",
        "parameter",
        _rx(
            r"""^[*_]*(?:speed|temperature|temp|volume|program|programme|cycles?|rpm|g-force|lid(?:\s+temperature)?
               |concentration|amount|voltage|current|power|ph|温度|回転数|転速|转速|电压|体积|容量)[*_]*\s*[:：]\s*\S"""
        ),
        "a setting (Speed:, Temperature:, Volume: ...): a detail of its step",
    ),
    Rule(
        "thermocycler",
        "parameter",
        _rx(
            rf"""^(?:{_TEMP}.*|\d+\s*(?:cycles?|rounds?|サイクル|个?循环)\b.*
               |(?:hold|forever|infinite|∞)(?:\s+(?:at\s+)?\d.*)?)$"""
        ),
        "a thermocycler line (95 °C 3 min, 30 cycles, 4 °C hold): a parameter of its step",
        unless_action=True,
    ),
    Rule(
        "program-step",
        "parameter",
        _rx(rf"^[^\W\d][\w\s/()-]{{0,40}}[:：]\s*(?:{_TEMP}|\d+\s*cycles?\b|\d+\s*サイクル)"),
        "a named program step (Initial denaturation: 95 °C, 2 min): a parameter of its step",
    ),
    Rule(
        "repeat",
        "parameter",
        _rx(r"^(?:repeat|cycle|loop)\b[^.]{0,30}?\b\d+\s*(?:x|×|times|cycles?)\s*[:：]?$"),
        "a repeat inside a program (Repeat 35x:): a parameter of its step",
    ),
    Rule(
        "settings",
        "parameter",
        _rx(
            r"""^(?:[(（]?\d[\d.,]*\s*(?:v|mv|ma|w|x\s*g|×\s*g|g|rpm|rcf|°c|℃|min|mins|h|s|sec|%|µl|μl|ml|µm|mm)\b[)）]?[,;、，\s]*){2,}$"""
        ),
        "a line of settings only (80 V, 20 min; 13,000 x g, 1 min): a parameter of its step",
    ),
    Rule(
        "metadata",
        "meta",
        _rx(
            r"""^[*_]*(?:authors?|doi|created|updated|last\s+(?:updated|modified|edited)|date|version|license
               |keywords?|affiliations?|citation|url|link|source|written\s+by|protocol\s+id|id
               |作成者|作成日|著者|日付|版|作者|日期|版本)[*_]*\s*[:：]"""
        ),
        "document metadata (Author:, DOI:, Date:, Version:), not part of any step",
    ),
    Rule(
        "version",
        "meta",
        _rx(r"^v(?:ersion)?\.?\s*\d+(?:\.\d+)*$"),
        "a version line (V.2, Version 3): metadata",
    ),
)

BLOCK_RULES: tuple[Rule, ...] = (
    Rule(
        "reagent-row",
        "parameter",
        _rx(
            rf"""^(?:\d+(?:[.,/]\d+)?\s*{_UNIT}\b(?:\s+of)?\s+\S.*
               |\S.{{0,80}}?(?:\s|\.{{2,}}|…|:|-|–|\t|补至|加至|至|到|各)+(?:to\s+)?\d+(?:[.,]\d+)?\s*{_UNIT}(?:\s.*)?)$"""
        ),
        "a reagent line (water 38 µl, 1 µl template) inside a parameter block",
        unless_action=True,
    ),
    Rule(
        "columns",
        "parameter",
        _rx(r"^\S.*?\S(?:\s{2,}\S+){2,}.*$"),
        "a row of columns (two or more wide gaps) inside a parameter block",
        unless_action=True,
    ),
    Rule(
        "box-rule",
        "skip",
        _rx(r"^[─━═\-–—+|\s]{3,}$"),
        "a table's rule line",
    ),
)

# Short label lines that open a parameter block ("Program:", "Reaction mix (per 20 µl):").
_BLOCK_LABEL = _rx(
    r"""^[*_]*(?:(?:[\w-]+\s+){0,3}(?:program|programme|profile|conditions?|settings?|parameters?)
       |cycling|(?:reaction|master|pcr|digestion|ligation|reagent)\s*(?:mix|mixture|set-?up|composition|components?)
       |mix|recipe|composition|per\s+reaction|components?|プログラム|反応条件|反応液|反応液組成|組成|サイクル条件|PCR条件
       |反应体系|反应程序|扩增程序|反应条件|循环条件|体系|程序)
       (?:\s*[(（][^)）]*[)）])?[*_]*\s*[:：]$"""
)


_LEAD = _rx(
    r"""(?:[:：]|\b(?:below|following|as\s+follows)\b.*[.:]|(?:以下|下記|次の|如下|下表|以下の).*[。：:])\s*$"""
)


def opens_block(text: str) -> bool:
    """True for a step that introduces what follows ("Prepare the mix:", "Run the program
    below.", "以下を加える。"): the parameter lines under it are its details."""
    return bool(_LEAD.search(text.strip()))


def block_label(text: str) -> bool:
    """True for a label that opens a parameter block ("Program:", "PCR conditions:", "反応条件：")."""
    return bool(_BLOCK_LABEL.match(text.strip()))


_ACTION_START = re.compile(
    r"^(?:(?:gently|carefully|briefly|quickly|slowly|then|again|immediately)\s+)?([A-Za-z]+)"
)
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")
_CJK_ACTION_END = re.compile(r"(?:[るすくうつぐぬぶむ]|[。！])\s*$")


def reads_as_action(text: str) -> bool:
    """True when a line reads as something to do: a lab verb first (English), or a CJK sentence."""
    body = text.strip().strip("*_[]")
    if is_cjk(body) or (_CJK_CHAR.search(body) and _CJK_ACTION_END.search(body)):
        return bool(_CJK_ACTION_END.search(body))
    m = _ACTION_START.match(body)
    if m and m.group(1).lower() in LAB_VERBS:
        return True
    words = re.findall(r"[A-Za-z]+", body.lower())
    return any(w in LAB_VERBS and w not in _PARAMETER_WORDS for w in words[1:]) and bool(
        re.search(r"[.!]$", body)
    )


_PARAMETER_WORDS = frozenset("hold cycle cycles min s h sec mix run step".split())


def match_line(text: str) -> Rule | None:
    """The first line rule that ``text`` (a line without its list marker) matches, else None."""
    return _first(LINE_RULES, text)


def match_block(text: str) -> Rule | None:
    """A line rule or, failing that, a block rule: for lines inside an open parameter block."""
    return _first(LINE_RULES, text) or _first(BLOCK_RULES, text)


def _first(rules: tuple[Rule, ...], text: str) -> Rule | None:
    """The first rule of ``rules`` that applies to ``text``."""
    body = text.strip()
    plain = body.strip("*_ ")
    action: bool | None = None
    for rule in rules:
        if rule.gate and rule.gate not in body:
            continue
        match = rule.pattern.match
        if match(body) is None and (plain == body or match(plain) is None):
            continue
        if rule.unless_action:
            if action is None:
                action = reads_as_action(body)
            if action:
                continue
        return rule
    return None


DAY_HEADING = _rx(
    r"""^[*_#\s]*(?P<day>(?:day|tag|jour|week)\s*\d+|\d+\s*日目|第\s*[0-9一二三四五六七八九十]+\s*(?:日目?|天)
       |(?:day|tag)\s+(?:one|two|three|four|five|six|seven)\b)
       (?:\s*[:：\-–—.(（]\s*(?P<rest>.{0,50}?))?[*_)）]*\s*[:：]?$"""
)


def day_heading(text: str) -> bool:
    """True for a part heading of a multi-day protocol ("Day 1", "Day 2 – Lysis", "2日目", "第一天")."""
    m = DAY_HEADING.match(ascii_view(text).strip())
    if not m:
        return False
    rest = (m.group("rest") or "").strip()
    return not rest or not (reads_as_action(rest) or re.search(r"[.。]$", rest))


STEP_HEADING = _rx(
    r"""^[*_\s]*(?:step|ステップ|手順|步骤|工程)\s*(?P<n>\d+)[a-z]?\s*(?:[:：.)\-–—]\s*|\s+|$)(?P<rest>.*?)[*_\s]*$
      |^[*_\s]*第\s*(?P<zn>\d+)\s*步\s*[:：、]?\s*(?P<zrest>.*?)[*_\s]*$"""
)


def step_heading(text: str) -> tuple[int, str] | None:
    """(number, text after the label) for a step label ("Step 1", "Step 2: Lysis", "第1步"), else None."""
    m = STEP_HEADING.match(ascii_view(text))
    if not m:
        return None
    group = "rest" if m.group("n") else "zrest"
    start, end = m.span(group)
    return int(m.group("n") or m.group("zn")), text[start:end].strip()


# Full-width ASCII (１．（１）Ａ) read as ASCII when finding markers; one char per char.
FULL_WIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_HAS_FULL_WIDTH = re.compile("[\uff01-\uff5e\u3000]")


def ascii_view(text: str) -> str:
    """``text`` with full-width ASCII read as ASCII (the same length, char for char)."""
    return text.translate(FULL_WIDTH) if _HAS_FULL_WIDTH.search(text) else text


PROCEDURE_NAMES = frozenset(
    "procedure, procedures, method, methods, methodology, steps, step, protocol, instructions, "
    "workflow, directions, experimental procedure, experimental procedures, step-by-step "
    "procedure, step-by-step instructions, materials and methods, protocol steps, procedure "
    "steps, experimental steps, step-by-step method details, method details, 手順, 実験手順, "
    "操作手順, 方法, 実験方法, 操作, プロトコル, 実験操作, 方法と手順, 步骤, 实验步骤, 操作步骤, "
    "实验方法, 方法步骤, 实验操作, 操作方法, 实验流程, 操作流程".split(", ")
)

OTHER_NAMES = frozenset(
    "material, materials, reagent, reagents, equipment, supplies, apparatus, instrument, "
    "instruments, solution, solutions, buffer, buffers, recipe, recipes, note, notes, general "
    "notes, safety, safety notes, safety information, safety precautions, safety warnings, "
    "hazard, hazards, reference, references, bibliography, background, introduction, "
    "abstract, overview, summary, troubleshooting, expected result, expected results, "
    "expected outcome, expected outcomes, results, anticipated results, discussion, timing, "
    "acknowledgements, acknowledgments, before you begin, before you start, before starting, "
    "reagent setup, equipment setup, materials and reagents, reagents and equipment, "
    "materials and equipment, required materials, what you need, tips, remarks, comments, "
    "precautions, storage, waste disposal, data analysis, reagents and solutions, "
    "key resources table, consumables, software, disclaimer, funding, competing interests, "
    "author contributions, limitations, 材料, 試薬, 器具, 機器, 装置, 準備物, 用意するもの, "
    "必要なもの, 注意事項, 参考文献, 文献, 備考, 安全, 背景, 概要, 目的, 結果, 試薬・器具, "
    "材料・試薬, 機器・器具, 使用機器, 使用試薬, 試薬調製, 原理, 考察, 注意点, 试剂, 仪器, "
    "设备, 注意事项, 安全事项, 实验材料, 实验试剂, 实验仪器, 仪器设备, 试剂配制, 材料与试剂, "
    "仪器与试剂, 实验原理, 实验目的, 实验结果, 结果, 备注, 参考文献, 讨论".split(", ")
)

MATERIAL_NAMES = frozenset(
    name
    for name in OTHER_NAMES
    if re.search(
        r"material|reagent|equipment|suppl|apparatus|instrument|solution|buffer|recipe|what you"
        r"|consumable|software|key resources|材料|試薬|器具|機器|装置|準備|用意|必要|试剂|仪器|设备",
        name,
    )
)


def section_kind(text: str) -> str | None:
    """ "procedure" / "other" when ``text`` is a known section heading, else None."""
    name = section_name(text)
    if name in PROCEDURE_NAMES:
        return "procedure"
    if name in OTHER_NAMES:
        return "other"
    return None


_SECTION_NUMBER = re.compile(r"^(?:[0-9]+|[ivxIVX]+|[A-Z]|[一二三四五六七八九十]+)[.)、．]\s*")
_SECTION_PAREN = re.compile(r"\s*[(（].*?[)）]\s*$")


def section_name(text: str) -> str:
    """The heading's name, lower-cased, without numbering, decoration and a parenthesis."""
    name = text.strip().strip("*_#").strip()
    if len(name) > 80:
        return ""
    name = _SECTION_PAREN.sub("", _SECTION_NUMBER.sub("", name))
    name = name.strip("【】[]■●◆◇□＜＞<>〈〉 ").rstrip(":：").strip().lower()
    return name if 0 < len(name) <= 40 else ""


# Reasons for decisions taken from the document's structure, one place for each.
REASONS = {
    "blank": "blank line",
    "front-matter": "YAML front matter (between --- lines at the top): metadata",
    "front-matter-title": "the title: key of the YAML front matter",
    "title-heading": "the first heading, before any step: the protocol's title",
    "title-key": "a Title: line",
    "title-line": "a short unmarked first line without closing punctuation, set apart from "
    "what follows: the title",
    "title-before-list": "an unmarked line before the first list item: the title",
    "setext": "underlined with === or --- (a Markdown heading)",
    "section-procedure": "a procedure section heading: its lines give the steps",
    "section-other": "a section heading that gives no steps (materials, notes, references ...)",
    "section-part": "a part of the procedure (Day 1, Day 2 ...): a heading, not a step",
    "plain-heading": "a short title-like line between a finished step and the next list item: "
    "a heading inside the procedure",
    "sentence-parent": "a list item written as a sentence, with sub-items: a step, and its "
    "sub-items steps after it",
    "heading": "a heading inside the procedure: groups the steps under it",
    "sub-heading": "a short line ending with ':' inside a list: a heading, not a step",
    "group": "a list item with sub-items that are actions: a heading over its sub-steps",
    "step-heading": "a step label (Step 1, 第1步) as a heading: the paragraph under it is the step",
    "step-heading-text": "a step label with its text and no paragraph under it: the step",
    "bare-number": "a step number alone on its line: the paragraph under it is the step",
    "item": "a list item with no sub-items that are actions: a step",
    "sub-item": "a list item under a heading item: a sub-step",
    "table-step": "a row of a step table: its action column is the step, the other columns details",
    "table-header": "the header row of a table",
    "table-param": "a row of a table that is not a step table: a parameter block",
    "line": "one step per line",
    "prose": "prose: split into sentences, one action each",
    "continuation": "continues the step above (wrapped or indented line)",
    "paragraph": "part of the paragraph under a step label: the same step",
    "own-step": "an unmarked line starting with a lab verb after a finished step: a step",
    "note-continuation": "continues the note above",
    "detail-child": "nested under a step and not an action: a detail of that step",
    "block-label": "a label that opens a parameter block (Program:, Reaction mix:)",
    "block-line": "inside a parameter block (after a label, or under a step ending with ':')",
    "in-materials": "in a materials / reagents / equipment section: what is needed, not a step",
    "in-other": "in a section that gives no steps",
    "note-section-line": "in a notes section: kept with no step",
    "empty": "a list marker with no text",
    "before-list": "an unmarked line before the list, after the title: not a step",
    "json-step": "a step of the JSON protocol",
}
