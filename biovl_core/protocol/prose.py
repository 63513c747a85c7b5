"""Prose -> steps: sentences, then one action (verb) per step, in English, Japanese, Chinese.

English splits where the word after "and" / "," / "then" / ";" is an imperative lab verb
from ``LAB_VERBS``: "Invert 4 times to mix and add 10 µl of X." -> "Invert 4 times to mix.",
"Add 10 µl of X."; "add primer1 and primer2" stays one step. Japanese is split with janome
(a pure-Python morphological analyser that ships its own dictionary) after a verb in its
te-form or continuative form that another verb follows: "チューブを遠心して、上清を捨てる。"
-> "チューブを遠心する。", "上清を捨てる。". Chinese splits at 然后 / 再 / 接着 / 随后 and
at "…后，". Sentences end at ``.!?`` (abbreviations and decimals kept) and at ``。！？``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

OVERNIGHT_SECONDS = 16 * 3600.0

LAB_VERBS: frozenset[str] = frozenset(
    """
    add adjust agitate aliquot apply aspirate autoclave balance blot boil break bring
    calibrate cap centrifuge change check chill clean close collect combine connect cool
    cover crush cut decant dilute discard disconnect dispense dissolve distribute dry elute
    empty equilibrate evaporate extract fill filter fix flick freeze grind harvest heat
    homogenize immerse incubate insert invert keep label leave let lift load measure melt
    microwave mix move note observe open pellet pipet pipette place plate pour prepare press
    put read record rinse remove repeat replace resuspend return rotate run scrape seal
    separate set shake sonicate spin spread squeeze stain stand start stir stop store
    suspend swirl take tap thaw tilt transfer turn use vortex wait warm wash weigh wipe
    withdraw wrap activate aspirate coat count dip dissect excise flush grow inoculate lyse
    neutralise neutralize pass pick rehydrate scrape seed soak spot streak touch dissolve
    """.split()
)

# Lab verbs that are also nouns: before one of _COMPOUND_HEADS they form a noun compound
# ("wash buffer", "spin column"), not an action.
_NOUNISH_VERBS = frozenset(
    """
    wash spin mix run set load heat dry cool stain label plate pellet filter seal cap cover
    rinse change start stop read record balance freeze extract press wrap cut spread shake
    tap turn return note store fix melt
    """.split()
)
_COMPOUND_HEADS = frozenset(
    """
    buffer buffers solution solutions column columns tube tubes step steps water ice
    mixture mix reagent reagents medium media time times speed temperature plate plates
    block rack bath station protocol program programme volume cycle cycles
    """.split()
)

_ADVERBS = frozenset(
    """
    again also briefly carefully completely gently gradually immediately quickly slowly
    thoroughly vigorously well firmly lightly then
    """.split()
)
_ABBREVIATIONS = frozenset(
    "e.g. i.e. approx. ca. cf. vs. fig. no. nos. dr. mr. mrs. ms. st. resp. incl. ref. vol. "
    "conc. temp.".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SENTENCE_END = re.compile(r"""(?<=[.!?])["')\]]?\s+(?=["'(\[]?[A-Z0-9µ])""")
_COORDINATOR = re.compile(
    r"(?:\s*,\s*and\s+then\s+|\s*,\s*and\s+|\s*,\s*then\s+|\s+and\s+then\s+|\s+and\s+"
    r"|\s+then\s+|\s*;\s*(?:then\s+)?|\s*,\s*)",
    re.IGNORECASE,
)
_UNIT_SECONDS = {
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
}  # fmt: skip
_DURATION = re.compile(
    r"(?<![\w.])(?P<a>\d+(?:\.\d+)?)(?:\s*(?:-|–|to)\s*(?P<b>\d+(?:\.\d+)?))?\s*"
    r"(?P<unit>hours?|hrs?|h|minutes?|mins?|seconds?|secs?|s)\b(?![-/·]\s?\w)",
    re.IGNORECASE,
)

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")
_KANA = re.compile(r"[\u3040-\u30ff]")
# A CJK sentence ends at 。！？ (or a Japanese full-width period ．not inside a number).
_CJK_SENTENCE_END = re.compile(r"(?<=[。！？])[」』）)]?\s*|(?<=[^\d０-９]．)\s*(?=[^\d０-９])")
_ZH_SPLIT = re.compile(r"(?:[，,；;]\s*(?:然后|再|接着|随后|之后)|(?<=后)[，,]\s*)")
# Verbs whose te-form is an adverb or a means ("ピペットを用いて混ぜる"), not a step of its own.
_JA_MEANS_VERBS = frozenset(
    "用いる 使う 使用 使用する 従う 応じる 対する 関する 注意 注意する 通す 沿う".split()
)


def is_cjk(text: str) -> bool:
    """True when the text is written mostly in Japanese or Chinese script."""
    letters = [ch for ch in text if not ch.isspace() and not ch.isdigit()]
    return bool(letters) and sum(1 for ch in letters if _CJK.match(ch)) * 3 >= len(letters)


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences, keeping "e.g.", "1.5 ml" and similar intact; 。！？ end CJK ones."""
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    pieces: list[str] = []
    for chunk in _split_cjk_sentences(text):
        pieces.extend(_split_latin_sentences(chunk))
    return [p for p in pieces if p]


def _split_cjk_sentences(text: str) -> list[str]:
    """Cut after 。！？ (no space needed after them)."""
    if not _CJK.search(text):
        return [text]
    out, start = [], 0
    for m in _CJK_SENTENCE_END.finditer(text):
        if m.end() > start:
            out.append(text[start : m.end()].strip())
            start = m.end()
    out.append(text[start:].strip())
    return [p for p in out if p]


def _split_latin_sentences(text: str) -> list[str]:
    """Cut after .!? followed by a space and a capital or digit, skipping abbreviations."""
    pieces: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start : m.start()].rstrip("\"')]")
        last = before.rsplit(" ", 1)[-1].lower()
        if last in _ABBREVIATIONS:
            continue
        pieces.append(text[start : m.start()].strip())
        start = m.end()
    pieces.append(text[start:].strip())
    return pieces


def split_step(sentence: str) -> list[str]:
    """Split one sentence at coordinated verbs, one action per piece (English, Japanese, Chinese).

    English pieces take the sentence's capitalisation and closing punctuation, so
    "Invert 4 times to mix and add 10 µl of X." -> ["Invert 4 times to mix.", "Add 10 µl of X."].
    """
    sentence = sentence.strip()
    if _KANA.search(sentence):
        return split_japanese(sentence)
    if is_cjk(sentence):
        return _split_chinese(sentence)
    return _split_english(sentence)


def split_japanese(sentence: str) -> list[str]:
    """One piece per verb: split after a verb in te-form (〜して、) or continuative form (〜し、).

    The verb that closes a piece is put in its dictionary form and the piece ends with 。, so
    "チューブを遠心して、上清を捨てる。" -> ["チューブを遠心する。", "上清を捨てる。"]. A verb
    naming the means ("ピペットを用いて") or followed by an auxiliary ("〜しておく") does not split.
    """
    tokens = list(_janome().tokenize(sentence))
    terminal = sentence[-1] if sentence[-1:] in "。！？" else ""
    pieces: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        cut = _japanese_cut(tokens, i)
        if cut is None:
            current.append(tok.surface)
            i += 1
            continue
        base = tok.base_form if tok.base_form != "*" else tok.surface
        pieces.append("".join(current) + base + "。")
        current = []
        i = cut
    rest = "".join(current).strip()
    if not pieces:
        return [sentence]
    if rest.strip("。！？、 "):
        pieces.append(rest if rest[-1:] in "。！？" else rest + (terminal or "。"))
    else:
        pieces[-1] = pieces[-1][:-1] + (terminal or "。")
    return pieces


def _japanese_cut(tokens: list[Any], i: int) -> int | None:
    """Where the next piece starts when token ``i`` is a verb that ends an action, else None."""
    tok = tokens[i]
    pos = tok.part_of_speech.split(",")
    if pos[0] != "動詞" or pos[1] != "自立" or tok.base_form in _JA_MEANS_VERBS:
        return None
    prev = tokens[i - 1] if i > 0 else None
    if prev is not None and tok.base_form == "する" and prev.surface in _JA_MEANS_VERBS:
        return None
    j = i + 1
    surfaces = [t.surface for t in tokens[j : j + 4]]
    if surfaces[:1] in (["て"], ["で"]):
        j += 1
        if j < len(tokens) and tokens[j].surface == "から":
            j += 1
    elif surfaces[:2] == ["た", "後"]:
        j += 2
        if j < len(tokens) and tokens[j].surface == "に":
            j += 1
    elif surfaces[:1] != ["、"]:
        return None
    if j < len(tokens) and tokens[j].surface in ("、", ","):
        j += 1
    if j >= len(tokens):
        return None
    following = tokens[j].part_of_speech.split(",")
    if following[0] in ("助動詞", "記号") or (following[0] == "動詞" and following[1] == "非自立"):
        return None
    if not any(t.part_of_speech.startswith("動詞") for t in tokens[j:]):
        return None
    return j


@lru_cache(maxsize=1)
def _janome() -> Any:
    """The janome tokenizer (its dictionary loads once, on first Japanese prose)."""
    try:
        from janome.tokenizer import Tokenizer
    except ImportError as exc:  # pragma: no cover - janome is a declared dependency
        raise RuntimeError("splitting Japanese prose needs janome: pip install janome") from exc
    return Tokenizer()


def _split_chinese(sentence: str) -> list[str]:
    """Split a Chinese sentence at 然后 / 再 / 接着 / 随后 and after "…后，"."""
    terminal = sentence[-1] if sentence[-1:] in "。！？" else ""
    body = sentence[:-1] if terminal else sentence
    pieces = [p.strip("，,；; ") for p in _ZH_SPLIT.split(body)]
    pieces = [p[:-1] if p.endswith("后") and len(p) > 1 else p for p in pieces if p]
    if len(pieces) < 2:
        return [sentence]
    return [p + (terminal or "。") for p in pieces]


def _split_english(sentence: str) -> list[str]:
    """Split one sentence at coordinated lab verbs, one action per piece.

    Pieces take the sentence's capitalisation and its closing punctuation, so
    "Invert 4 times to mix and add 10 µl of X." -> ["Invert 4 times to mix.", "Add 10 µl of X."].
    """
    sentence = sentence.strip()
    m_end = re.search(r"[.!?]+$", sentence)
    terminal = m_end.group(0) if m_end else ""
    body = sentence[: m_end.start()] if m_end else sentence
    cuts: list[tuple[int, int]] = []
    chunk_start = 0
    for m in _COORDINATOR.finditer(body):
        if m.start() < chunk_start or not _is_split_point(body, chunk_start, m, first=not cuts):
            continue
        cuts.append((m.start(), m.end()))
        chunk_start = m.end()
    if not cuts:
        return [sentence]
    bounds = [0] + [e for _, e in cuts]
    ends = [s for s, _ in cuts] + [len(body)]
    capital = sentence[:1].isupper()
    pieces = []
    for a, b in zip(bounds, ends, strict=True):
        piece = body[a:b].strip().rstrip(",;:")
        if capital:
            piece = piece[:1].upper() + piece[1:]
        pieces.append(piece + terminal)
    return pieces


def step_verb(step: str) -> str | None:
    """The first lab verb of a step, lower-cased ("Gently invert the tube" -> "invert")."""
    for word in _WORD.findall(step):
        w = word.lower()
        if w in LAB_VERBS:
            return w
    return None


def step_duration_hint(step: str) -> float | None:
    """Seconds of waiting/processing named in a step ("centrifuge 1 min" -> 60.0), or None.

    Ranges count as their midpoint ("2-3 min" -> 150), several amounts add up
    ("1 h 30 min" -> 5400), and "overnight" counts as 16 h.
    """
    total = 0.0
    found = False
    for m in _DURATION.finditer(step):
        unit = m.group("unit").lower()
        a = float(m.group("a"))
        b = float(m.group("b")) if m.group("b") else a
        total += (a + b) / 2.0 * _UNIT_SECONDS[unit]
        found = True
    if re.search(r"\bover\s?night\b", step, re.IGNORECASE):
        total += OVERNIGHT_SECONDS
        found = True
    return total if found else None


def wraps(line: str, next_line: str) -> bool:
    """True when ``line`` is cut mid-sentence and ``next_line`` carries on with it."""
    if re.search(r"[.!?:;]$", line):
        return False
    if re.search(r"\b(?:the|a|an|of|to|and|or|with|in|into|on|at|for|by|from|then)$", line, re.I):
        return True
    words = _WORD.findall(next_line)
    return next_line[:1].islower() and not (words and words[0].lower() in LAB_VERBS)


def _is_split_point(body: str, chunk_start: int, m: re.Match[str], first: bool) -> bool:
    """True when the coordinator ``m`` joins two actions (a lab verb follows it)."""
    rest = body[m.end() :]
    after = _WORD.findall(rest[:80])
    while after and after[0].lower() in _ADVERBS:
        rest = rest[rest.index(after[0]) + len(after[0]) :]
        after = after[1:]
    if not after or after[0].lower() not in LAB_VERBS:
        return False
    if not re.match(r"\s*" + re.escape(after[0]) + r"(?![-\w])", rest):
        return False
    if (
        after[0].lower() in _NOUNISH_VERBS
        and len(after) > 1
        and after[1].lower() in _COMPOUND_HEADS
    ):
        return False
    left = body[chunk_start : m.start()]
    left_words = [w.lower() for w in _WORD.findall(left)]
    if not any(
        w in LAB_VERBS and (i == 0 or left_words[i - 1] != "to") for i, w in enumerate(left_words)
    ):
        return False
    joiner = m.group(0).strip().lower()
    if first and joiner == "and" and len(left.split()) == 1:
        return False
    return True
