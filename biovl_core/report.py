"""What `biovl align` and `biovl eval` print and write: step tables, mIoU tables, output files."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from biovl_core.align import align
from biovl_core.cache import atomic_write
from biovl_core.config import PipelineConfig
from biovl_core.dataset import discover
from biovl_core.formats import annotations_to_spans, read_annotations, to_csv, to_json, to_webvtt
from biovl_core.metrics import aggregate, miou, step_ious
from biovl_core.pipeline import (
    ProgressFn,
    align_video,
    aligner_params,
    recording_similarity,
    resolve_method,
)
from biovl_core.protocol import read_protocol
from biovl_core.result import AlignmentResult, Span

RANDOM_BANNER = (
    "!" * 78 + "\n!! RANDOM DEMO WEIGHTS: the model has random weights, so this alignment means\n"
    "!! nothing. Provide real weights with --checkpoint FILE or --pretrained TAG.\n" + "!" * 78
)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressFn | None]:
    """A ProgressFn drawing one tqdm bar per stage (items/s and ETA), or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="seg", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def _fmt(x: float | None, spec: str = "7.1f") -> str:
    return format(x, spec) if x is not None else " " * (int(spec.split(".")[0]) - 1) + "-"


def step_table(result: AlignmentResult, gt: Sequence[Span] | None = None) -> str:
    """The step table: index, step text, predicted start/end, score (and annotated span, IoU)."""
    width = min(60, max(8, *(len(s) for s in result.steps)))
    head = f"{'#':>3}  {'step':<{width}}  {'start':>7}  {'end':>7}  {'score':>6}"
    if gt is not None:
        head += f"  {'gt_start':>8}  {'gt_end':>7}  {'IoU':>5}"
        ious = step_ious(result.spans, gt)
    lines = [head]
    for k, (text, span, score) in enumerate(
        zip(result.steps, result.spans, result.step_scores, strict=True)
    ):
        text = text if len(text) <= width else text[: width - 1] + "…"
        start, end = span if span is not None else (None, None)
        line = f"{k + 1:>3}  {text:<{width}}  {_fmt(start)}  {_fmt(end)}  {_fmt(score, '6.3f')}"
        if gt is not None:
            g0, g1 = gt[k] if gt[k] is not None else (None, None)
            line += f"  {_fmt(g0, '8.1f')}  {_fmt(g1)}  {ious[k]:5.2f}"
        lines.append(line)
    return "\n".join(lines)


def write_outputs(result: AlignmentResult, out_dir: Path) -> list[Path]:
    """Write alignment.json (with the similarity matrix), .csv and .vtt into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "alignment.json": to_json(result, include_similarity=True),
        "alignment.csv": to_csv(result),
        "alignment.vtt": to_webvtt(result),
    }
    paths = []
    for name, text in files.items():
        path = out_dir / name
        raw = text.encode("utf-8")
        atomic_write(path, lambda fh, raw=raw: fh.write(raw))
        paths.append(path)
    return paths


def run_align(args: argparse.Namespace, cfg: PipelineConfig, out: TextIO | None = None) -> int:
    """`biovl align`: align, print the step table (and mIoU), write the output files."""
    out = out or sys.stdout
    protocol = read_protocol(args.protocol)
    gt = None
    if args.annotations:
        gt = annotations_to_spans(read_annotations(args.annotations), protocol.steps)
    with progress_bars(not args.quiet) as progress:
        result = align_video(args.video, protocol, cfg, progress=progress)
    if result.weights == "random-demo":
        print(RANDOM_BANNER, file=out)
    print(
        f"{protocol.title or args.video.name}: {len(protocol.steps)} steps, "
        f"{result.num_segments} segments of {cfg.segment_seconds:g} s, "
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
    """`biovl eval`: mIoU of several aligners over a data set folder or synthetic data."""
    out = out or sys.stdout
    methods = _methods(args.methods)
    if args.synthetic:
        report = eval_synthetic(args, methods, out)
    elif args.dataset is None:
        raise SystemExit("biovl eval: give a DATASET folder or --synthetic")
    else:
        report = eval_dataset(args, cfg, methods, out)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=out)
    return 0


def eval_dataset(
    args: argparse.Namespace, cfg: PipelineConfig, methods: list[str], out: TextIO
) -> dict[str, Any]:
    """Embed each recording once, align with every method, print the per-experiment table."""
    from biovl_core.embed import load_embedder

    recordings = [r for r in discover(args.dataset) if r.annotations is not None]
    if not recordings:
        raise SystemExit(f"biovl eval: no recording under {args.dataset} has annotations to score")
    embedder = load_embedder(cfg)
    if embedder.weights == "random-demo":
        print(RANDOM_BANNER, file=out)
    rows = []
    with progress_bars(not args.quiet) as progress:
        for rec in recordings:
            protocol = read_protocol(rec.protocol)
            gt = annotations_to_spans(read_annotations(rec.annotations), protocol.steps)
            sim = recording_similarity(rec.video, protocol.steps, cfg, embedder, progress=progress)
            scores = _score_methods(
                sim.similarity,
                gt,
                sim.duration_s,
                cfg.segment_seconds,
                methods,
                cfg.backend,
                steps=protocol.steps,
            )
            rows.append({"name": rec.name, "experiment": rec.experiment, **scores})
            print(
                f"{rec.name:<24} " + "  ".join(f"{m} {100 * v:5.1f}" for m, v in scores.items()),
                file=out,
            )
    print(
        f"\nmIoU % (mean over videos ± sd), model {embedder.model_id} ({embedder.weights})",
        file=out,
    )
    return {"rows": rows, "summary": print_score_table(rows, methods, out)}


def eval_synthetic(args: argparse.Namespace, methods: list[str], out: TextIO) -> dict[str, Any]:
    """Synthetic benchmark: per difficulty, mean ± sd over seeds of the data-set mIoU."""
    from biovl_core.synthetic import make_benchmark

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    levels = [float(d) for d in args.difficulty.split(",") if d.strip()]
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
