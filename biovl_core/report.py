"""What `biovl protocol`, `align` and `eval` print and write: step tables, mIoU tables, files."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from wcwidth import wcswidth

from biovl_core.align import align
from biovl_core.align import resolve_method as method_spec
from biovl_core.config import PipelineConfig
from biovl_core.errors import BioVLError
from biovl_core.files import atomic_write
from biovl_core.io import (
    annotations_to_spans,
    discover,
    read_annotations,
    to_csv,
    to_eaf,
    to_json,
    to_webvtt,
)
from biovl_core.metrics import aggregate, miou, step_ious
from biovl_core.pipeline import (
    ProgressFn,
    align_video,
    aligner_params,
    recording_similarity,
    resolve_method,
)
from biovl_core.protocol import LineDecision, Protocol, explain_file, read_protocol
from biovl_core.result import AlignmentResult, Span
from biovl_core.segment_fit import fit_segment_seconds
from biovl_core.video import probe

RANDOM_BANNER = (
    "!" * 78 + "\n!! RANDOM DEMO WEIGHTS: the model has random weights, so this alignment means\n"
    "!! nothing. Provide real weights with --checkpoint FILE or --pretrained TAG.\n" + "!" * 78
)


def plural(n: int, word: str) -> str:
    """ "1 step", "2 steps"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _width(text: str) -> int:
    """Columns a string takes in a terminal (CJK characters take two)."""
    w = wcswidth(text)
    return w if w >= 0 else len(text)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns (with "…") and padded to exactly ``width``."""
    if _width(text) > width:
        while text and _width(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - _width(text))


@contextmanager
def progress_bars(enabled: bool, leave: bool = True) -> Iterator[ProgressFn | None]:
    """A ProgressFn drawing one tqdm bar per stage (items/s and ETA), or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(
                total=total, desc=stage, unit="seg", file=sys.stderr, leave=leave
            )
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def _fmt(x: float | None, spec: str = "7.1f") -> str:
    return format(x, spec) if x is not None else " " * (int(spec.split(".")[0]) - 1) + "-"


def step_table(result: AlignmentResult, gt: Sequence[Span] | None = None) -> str:
    """The step table: index, step text, predicted start/end, score (and annotated span, IoU).

    Columns line up in a terminal for any script (widths by wcwidth); a step without an
    annotation shows no IoU.
    """
    width = min(60, max(8, *(_width(s) for s in result.steps)))
    head = f"{'#':>3}  {_fit('step', width)}  {'start':>7}  {'end':>7}  {'score':>6}"
    if gt is not None:
        head += f"  {'gt_start':>8}  {'gt_end':>7}  {'IoU':>5}"
        ious = step_ious(result.spans, gt)
    lines = [head]
    for k, (text, span, score) in enumerate(
        zip(result.steps, result.spans, result.step_scores, strict=True)
    ):
        start, end = span if span is not None else (None, None)
        line = f"{k + 1:>3}  {_fit(text, width)}  {_fmt(start)}  {_fmt(end)}  {_fmt(score, '6.3f')}"
        if gt is not None:
            g0, g1 = gt[k] if gt[k] is not None else (None, None)
            iou = ious[k] if gt[k] is not None else None
            line += f"  {_fmt(g0, '8.1f')}  {_fmt(g1)}  {_fmt(iou, '5.2f')}"
        lines.append(line)
    return "\n".join(lines)


def write_outputs(result: AlignmentResult, out_dir: Path) -> list[Path]:
    """Write alignment.json (with the similarity matrix), .csv, .vtt and .eaf into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "alignment.json": to_json(result, include_similarity=True),
        "alignment.csv": to_csv(result),
        "alignment.vtt": to_webvtt(result),
        "alignment.eaf": to_eaf(result),
    }
    paths = []
    for name, text in files.items():
        path = out_dir / name
        raw = text.encode("utf-8")
        atomic_write(path, lambda fh, raw=raw: fh.write(raw))
        paths.append(path)
    return paths


def run_protocol(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`biovl protocol FILE`: the steps found, with source lines and notes, to check before upload."""
    out = out or sys.stdout
    split = True if args.split_verbs else None
    if getattr(args, "explain", False):
        protocol, decisions = explain_file(args.file, split_verbs=split)
        print(explanation(decisions), file=out)
        print(file=out)
        print(protocol_listing(protocol, args.file.name), file=out)
        return 0
    protocol = read_protocol(args.file, split_verbs=split)
    if args.json:
        print(json.dumps(protocol.to_dict(), indent=1, ensure_ascii=False), file=out)
        return 0
    print(protocol_listing(protocol, args.file.name), file=out)
    return 0


def explanation(decisions: list[LineDecision]) -> str:
    """One row per source line: its number, class, text (shortened) and the reason."""
    rows = []
    for d in decisions:
        if d.cls == "skip" and not d.text:
            continue
        text = d.text if len(d.text) <= 48 else d.text[:47] + "…"
        rows.append(f"{d.number:>4}  {d.cls:<9}  {text:<48}  {d.reason}")
    return "\n".join(rows)


def protocol_listing(protocol: Protocol, name: str) -> str:
    """Title line, then one line per step (number, source line, text) and its notes under it."""
    lines = [f"{protocol.title or name}: {plural(len(protocol), 'step')}"]
    for k, (text, line, notes, details) in enumerate(
        zip(protocol.steps, protocol.lines, protocol.notes, protocol.details, strict=True)
    ):
        where = f"line {line}" if line is not None else ""
        lines.append(f"{k + 1:>4}  {where:<10} {text}")
        lines.extend(f"{'':>16}· {detail}" for detail in details)
        lines.extend(f"{'':>16}└ {note}" for note in notes)
    return "\n".join(lines)


def run_align(args: argparse.Namespace, cfg: PipelineConfig, out: TextIO | None = None) -> int:
    """`biovl align`: check the inputs, align, print the step table (and mIoU), write files.

    The protocol, the annotations and the video are read and checked before the model loads,
    so a bad input fails in a second, not after the model has loaded.
    """
    out = out or sys.stdout
    protocol = read_protocol(args.protocol)
    gt = None
    if args.annotations:
        gt = annotations_to_spans(read_annotations(args.annotations), protocol.steps)
    info = probe(args.video)
    cfg, note = fit_segment_seconds(cfg, len(protocol), info.duration_s, str(args.video))
    if note:
        print(note, file=out)
    with progress_bars(not args.quiet) as progress:
        result = align_video(args.video, protocol, cfg, progress=progress)
    if result.weights == "random-demo" and not args.quiet:
        print(RANDOM_BANNER, file=out)
    print(
        f"{protocol.title or args.video.name}: {plural(len(protocol), 'step')}, "
        f"{plural(result.num_segments, 'segment')} of {cfg.segment_seconds:g} s, "
        f"{result.duration_s:.1f} s of video; model {result.model_id} ({result.weights}); "
        f"aligner {result.method}",
        file=out,
    )
    print(step_table(result, gt), file=out)
    if gt is not None:
        ours = miou(result.spans, gt)
        base = miou(result.baseline_spans or [], gt)
        print(f"mIoU {100 * ours:.1f}%  (uniform baseline {100 * base:.1f}%)", file=out)
    if args.out:
        for path in write_outputs(result, args.out):
            print(f"wrote {path}", file=out)
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(f"timings: {timing}", file=out)
    return 0


def check_eval_arguments(args: argparse.Namespace) -> None:
    """Refuse empty or malformed --methods / --seeds / --difficulty before any work starts."""
    methods = _methods(args.methods)
    if not methods:
        raise BioVLError(
            f"--methods {args.methods!r}: names no method; try --methods uniform,nw,default"
        )
    for m in methods:
        method_spec(m)
    if args.synthetic:
        _seeds(args.seeds)
        _levels(args.difficulty)


def _seeds(spec: str) -> list[int]:
    """--seeds "0,1,2" -> [0, 1, 2], or an error naming the flag."""
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise BioVLError(
            f"--seeds {spec!r}: give comma-separated whole numbers, e.g. --seeds 0,1,2"
        )
    return seeds


def _levels(spec: str) -> list[float]:
    """--difficulty "0.5,1" -> [0.5, 1.0], or an error naming the flag."""
    try:
        levels = [float(d) for d in spec.split(",") if d.strip()]
    except ValueError:
        levels = []
    if not levels or not all(math.isfinite(x) and x >= 0 for x in levels):
        raise BioVLError(
            f"--difficulty {spec!r}: give comma-separated numbers >= 0, e.g. --difficulty 0.5,1,1.5"
        )
    return levels


def _methods(spec: str) -> list[str]:
    return [m.strip() for m in spec.split(",") if m.strip()]


def _score_methods(
    similarity: np.ndarray,
    gt: Sequence[Span],
    duration_s: float,
    segment_seconds: float,
    methods: Sequence[str],
    backend: str = "auto",
    steps: Sequence[str] | None = None,
) -> dict[str, float]:
    """mIoU of each method on one recording (step texts passed as ``biovl align`` passes them)."""
    scores = {}
    for method in methods:
        resolved = resolve_method(PipelineConfig(method=method))
        params = aligner_params(resolved, {}, list(steps)) if steps is not None else {}
        a = align(
            similarity,
            segment_seconds=segment_seconds,
            method=resolved,
            duration_s=duration_s,
            backend=backend if resolved != "uniform" else "auto",
            **params,
        )
        scores[method] = miou(a.spans, gt)
    return scores


def print_score_table(
    rows: list[dict[str, Any]], methods: Sequence[str], out: TextIO, group_by: str = "experiment"
) -> dict[str, Any]:
    """Print mean ± sd of per-video mIoU (%) per group and overall, one column per method."""
    scores = {m: aggregate(rows, key=m, group_by=group_by) for m in methods}
    groups = list(scores[methods[0]].by_experiment)
    width = max(12, *(len(g) for g in groups))
    print(f"{group_by:<{width}}  {'n':>3}  " + "  ".join(f"{m:>13}" for m in methods), file=out)
    for name in [*groups, "all"]:
        cells = []
        for m in methods:
            s = scores[m].overall if name == "all" else scores[m].by_experiment[name]
            cells.append(f"{s.mean:6.1f} ± {s.std:4.1f}")
        n = (
            scores[methods[0]].overall if name == "all" else scores[methods[0]].by_experiment[name]
        ).n
        print(f"{name:<{width}}  {n:>3}  " + "  ".join(f"{c:>13}" for c in cells), file=out)
    return {m: s.to_dict() for m, s in scores.items()}


def run_eval(args: argparse.Namespace, cfg: PipelineConfig, out: TextIO | None = None) -> int:
    """`biovl eval`: mIoU of several aligners over a data set folder or synthetic data.

    Exit code 1 when some recording failed (the others are still scored and summarised).
    """
    out = out or sys.stdout
    methods = _methods(args.methods)
    if args.synthetic:
        report = eval_synthetic(args, methods, out)
    elif args.dataset is None:
        raise BioVLError(
            "eval needs a DATASET folder (one sub-folder per recording) or --synthetic"
        )
    else:
        report = eval_dataset(args, cfg, methods, out)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=out)
    return 1 if report.get("failed") else 0


def eval_dataset(
    args: argparse.Namespace, cfg: PipelineConfig, methods: list[str], out: TextIO
) -> dict[str, Any]:
    """Embed each recording once, align with every method, print the per-experiment table.

    A recording that fails is named with its error on stderr and marked FAILED in the
    table; the others are still scored and the summary still printed.
    """
    from tqdm import tqdm

    from biovl_core.embed import load_embedder

    recordings = [r for r in discover(args.dataset) if r.annotations is not None]
    if not recordings:
        raise BioVLError(
            f"{args.dataset}: no recording has an annotations.csv/.json to score against; "
            "add annotations, or use `biovl align` for unannotated recordings"
        )
    embedder = load_embedder(cfg)
    if embedder.weights == "random-demo" and not args.quiet:
        print(RANDOM_BANNER, file=out)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    bar = tqdm(recordings, desc="recordings", unit="rec", file=sys.stderr, disable=args.quiet)
    for rec in bar:
        try:
            scores = _eval_recording(rec, cfg, embedder, methods, quiet=args.quiet)
        except Exception as exc:  # one bad recording never stops the evaluation of the rest
            error = " ".join(str(exc).split()) or type(exc).__name__
            print(f"biovl: {rec.folder}: failed: {error}", file=sys.stderr)
            failed.append({"name": rec.name, "folder": str(rec.folder), "error": error})
            print(f"{_fit(rec.name, 24)} FAILED  {error[:80]}", file=out)
            continue
        rows.append({"name": rec.name, "experiment": rec.experiment, **scores})
        print(
            f"{_fit(rec.name, 24)} " + "  ".join(f"{m} {100 * v:5.1f}" for m, v in scores.items()),
            file=out,
        )
    bar.close()
    print(
        f"\nmIoU % (mean over videos ± sd), model {embedder.model_id} ({embedder.weights})",
        file=out,
    )
    summary = print_score_table(rows, methods, out) if rows else {}
    if not rows:
        print("no recording could be scored", file=out)
    if failed:
        names = ", ".join(f["name"] for f in failed)
        print(f"{plural(len(failed), 'recording')} failed: {names}", file=out)
    return {"rows": rows, "failed": failed, "summary": summary}


def _eval_recording(
    rec: Any, cfg: PipelineConfig, embedder: Any, methods: list[str], quiet: bool
) -> dict[str, float]:
    """mIoU of each method on one recording folder (its protocol, annotations and video)."""
    protocol = read_protocol(rec.protocol)
    gt = annotations_to_spans(read_annotations(rec.annotations), protocol.steps)
    info = probe(rec.video)
    cfg, note = fit_segment_seconds(cfg, len(protocol), info.duration_s, str(rec.video))
    if note and not quiet:
        print(f"{rec.name}: {note}", file=sys.stderr)
    with progress_bars(not quiet, leave=False) as progress:
        sim = recording_similarity(rec.video, protocol.steps, cfg, embedder, progress=progress)
    return _score_methods(
        sim.similarity,
        gt,
        sim.duration_s,
        cfg.segment_seconds,
        methods,
        cfg.backend,
        steps=protocol.steps,
    )


def eval_synthetic(args: argparse.Namespace, methods: list[str], out: TextIO) -> dict[str, Any]:
    """Synthetic benchmark: per difficulty, mean ± sd over seeds of the data-set mIoU."""
    from biovl_core.synthetic import make_benchmark

    seeds = _seeds(args.seeds)
    levels = _levels(args.difficulty)
    report: dict[str, Any] = {}
    for level in levels:
        rows = []
        for seed in seeds:
            for p in make_benchmark(seed=seed, difficulty=level):
                scores = _score_methods(
                    p.similarity,
                    p.gt_spans,
                    p.duration_s,
                    p.segment_seconds,
                    methods,
                    steps=p.steps,
                )
                rows.append({"name": p.name, "experiment": p.experiment, "seed": seed, **scores})
        print(
            f"\ndifficulty {level:g}: {len(seeds)} seeds x {len(rows) // len(seeds)} recordings;"
            " mIoU % per experiment (mean ± sd over videos)",
            file=out,
        )
        summary = print_score_table(rows, methods, out)
        per_seed = {
            m: [100 * float(np.mean([r[m] for r in rows if r["seed"] == s])) for s in seeds]
            for m in methods
        }
        print(
            "data-set mIoU over seeds: "
            + ", ".join(
                f"{m} {np.mean(v):.1f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.1f}"
                for m, v in per_seed.items()
            ),
            file=out,
        )
        report[f"{level:g}"] = {"summary": summary, "per_seed": per_seed}
    return report
