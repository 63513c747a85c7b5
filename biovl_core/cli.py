"""The `biovl` command line: align one recording, evaluate a data set.

``services/cli.py`` adds the service commands (serve, worker, requeue, realign) on top of
``build_parser()``; this module stays free of service dependencies.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from biovl_core.config import RANDOM_WEIGHTS_ENV, PipelineConfig
from biovl_core.errors import BioVLError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that embeds video (model, weights, device, segments)."""
    d = PipelineConfig()
    g = parser.add_argument_group("model")
    g.add_argument(
        "--embedder",
        default=d.embedder,
        choices=["clip", "clip_pooled", "s3d"],
        help="clip: middle frame per segment (the paper's CLIP); clip_pooled: "
        "k frames per segment, mean-pooled; s3d: S3D MIL-NCE (HowTo100M)",
    )
    g.add_argument(
        "--model",
        default=d.model,
        help="open_clip model name or a model-config JSON path (default %(default)s)",
    )
    g.add_argument(
        "--pretrained",
        default=d.pretrained,
        help="open_clip pretrained tag, fetched where the internet is reachable",
    )
    g.add_argument("--checkpoint", default=None, help="local weights file (overrides --pretrained)")
    g.add_argument(
        "--allow-random-weights",
        action="store_true",
        help=f"demo only: random weights when real ones are unavailable "
        f"(or set {RANDOM_WEIGHTS_ENV}=1); the alignment then means nothing",
    )
    g.add_argument(
        "--frames-per-segment",
        type=int,
        default=None,
        help="frames embedded per segment (1 for clip, 8 for clip_pooled/s3d)",
    )
    g.add_argument(
        "--prompt-template",
        action="append",
        dest="prompt_templates",
        metavar="TEMPLATE",
        help="step text prompt with {} for the step, e.g. 'a person in a lab: {}'; repeat "
        "for an ensemble (embeddings averaged); default: the step text as is",
    )
    g.add_argument("--segment-seconds", type=float, default=d.segment_seconds)
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    g.add_argument("--decoder", default=d.decoder, choices=["auto", "pyav", "dali"])
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument(
        "--method",
        default=d.method,
        help="aligner: default | uniform | nw | drop_dtw | ... (default %(default)s)",
    )
    g.add_argument("--backend", default=d.backend, choices=["auto", "numpy", "numba", "cupy"])
    g.add_argument(
        "--cache-dir",
        default=None,
        help="embedding cache folder (re-aligning then never re-decodes)",
    )


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Build the PipelineConfig the model flags describe."""
    frames = args.frames_per_segment or (1 if args.embedder == "clip" else 8)
    cfg = PipelineConfig(
        segment_seconds=args.segment_seconds,
        embedder=args.embedder,
        model=args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        frames_per_segment=frames,
        batch_size=args.batch_size,
        device=args.device,
        decoder=args.decoder,
        method=args.method,
        backend=args.backend,
        cache_dir=args.cache_dir,
    )
    if args.prompt_templates:
        cfg = cfg.replace(prompt_templates=tuple(args.prompt_templates))
    if args.allow_random_weights:
        cfg = cfg.replace(allow_random_weights=True)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the core commands; services add theirs to its subparsers."""
    parser = argparse.ArgumentParser(
        prog="biovl", description="Align protocol steps to the lab video where they happen."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("align", help="align one video with its protocol")
    p.add_argument("video", type=Path)
    p.add_argument("protocol", type=Path, help="plain text, numbered/bulleted list, or JSON")
    p.add_argument("--annotations", type=Path, help="ground truth (CSV step,start,end or JSON)")
    p.add_argument("--out", type=Path, help="folder for alignment.json/.csv/.vtt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_align)

    p = sub.add_parser(
        "eval", help="score a data set (one folder per recording), or synthetic data"
    )
    p.add_argument("dataset", type=Path, nargs="?", help="data set folder")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="evaluate on generated similarity matrices instead of a folder",
    )
    p.add_argument("--difficulty", default="1.0", help="synthetic: comma-separated levels")
    p.add_argument("--seeds", default="0,1,2,3,4", help="synthetic: comma-separated seeds")
    p.add_argument(
        "--methods",
        default="uniform,nw,drop_dtw,default",
        help="comma-separated aligner methods to compare",
    )
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    p.add_argument("--quiet", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("bench", help="benchmarks (align, decode, embed, e2e, all)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)
    return parser


def _cmd_align(args: argparse.Namespace) -> int:
    from biovl_core.report import run_align

    return run_align(args, config_from_args(args))


def _cmd_eval(args: argparse.Namespace) -> int:
    from biovl_core.report import run_eval

    return run_eval(args, config_from_args(args))


def _cmd_bench(args: argparse.Namespace) -> int:
    from biovl_core.bench.__main__ import main as bench_main

    bench_main(list(args.rest))
    return 0


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and dispatch; user errors print one clear line and exit 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BioVLError as exc:
        print(f"biovl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biovl: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the core CLI (``python -m biovl_core``)."""
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
