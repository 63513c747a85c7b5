"""The `biovl` command line: check a protocol, align one recording, evaluate a data set.

Every user mistake ends in one line on stderr naming the problem and the fix, exit code 2,
found before the model loads: options first, then the protocol, then the video.

``services/cli.py`` adds the service commands (serve, worker, requeue, realign) on top of
``build_parser()``; this module stays free of service dependencies.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from biovl_core.config import RANDOM_WEIGHTS_ENV, PipelineConfig
from biovl_core.device import MissingDependency
from biovl_core.errors import BioVLError, DecoderUnavailable


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (problem and where to look), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``prog: error: message`` and the help hint on one line, then exit 2."""
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def check_model_arguments(args: argparse.Namespace) -> None:
    """Refuse option values that cannot work, naming the flag and a value that does."""
    seg = args.segment_seconds
    if not (math.isfinite(seg) and seg > 0):
        raise BioVLError(
            f"--segment-seconds {seg:g}: a segment must last a positive number of seconds; "
            "try --segment-seconds 5 (the paper's setting)"
        )
    if args.frames_per_segment is not None and args.frames_per_segment < 1:
        raise BioVLError(
            f"--frames-per-segment {args.frames_per_segment}: at least 1 frame per segment is "
            "needed; pass --frames-per-segment 1 (or 8 for clip_pooled/s3d), or leave it out"
        )
    if args.batch_size < 1:
        raise BioVLError(
            f"--batch-size {args.batch_size}: at least 1 segment per batch; try --batch-size 64"
        )
    if args.decoder == "dali":
        from biovl_core.video import dali_unavailable_reason

        reason = dali_unavailable_reason()
        if reason is not None:
            raise DecoderUnavailable(
                f"--decoder dali: {reason}; use --decoder auto (DALI where it works, else PyAV) "
                "or --decoder pyav"
            )


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
    g.add_argument(
        "--sampling",
        default=d.sampling,
        choices=["keyframe", "exact"],
        help="frame of each segment: the keyframe nearest its middle within "
        "--keyframe-tolerance, decoded alone (default), or the exact middle frame",
    )
    g.add_argument("--keyframe-tolerance", type=float, default=d.keyframe_tolerance_s)
    g.add_argument(
        "--deadline",
        type=float,
        default=d.job_deadline_s,
        help="seconds one recording may take, 0 for no limit (default %(default)s)",
    )
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
    frames = args.frames_per_segment
    if frames is None:
        frames = 1 if args.embedder == "clip" else 8
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
        sampling=args.sampling,
        keyframe_tolerance_s=args.keyframe_tolerance,
        job_deadline_s=args.deadline or None,
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
    parser = OneLineParser(
        prog="biovl", description="Align protocol steps to the lab video where they happen."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("protocol", help="show the steps found in a protocol file, with notes")
    p.add_argument("file", type=Path, help="plain text, Markdown, JSON or protocols.io JSON")
    p.add_argument("--json", action="store_true", help="print the steps as JSON")
    p.add_argument(
        "--explain",
        action="store_true",
        help="print every line's class (title, step, note, parameter ...) and the reason",
    )
    p.add_argument(
        "--split-verbs",
        action="store_true",
        help="also split list items at coordinated verbs (prose is always split)",
    )
    p.set_defaults(func=_cmd_protocol)

    p = sub.add_parser("align", help="align one video with its protocol")
    p.add_argument("video", type=Path)
    p.add_argument("protocol", type=Path, help="plain text, numbered/bulleted list, or JSON")
    p.add_argument("--annotations", type=Path, help="ground truth (CSV step,start,end or JSON)")
    p.add_argument("--out", type=Path, help="folder for alignment.json/.csv/.vtt/.eaf (ELAN)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or banners")
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
    p.add_argument("--quiet", action="store_true", help="no progress bars or banners")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("bench", help="benchmarks (align, decode, embed, e2e, all)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)
    return parser


def _cmd_protocol(args: argparse.Namespace) -> int:
    from biovl_core.report import run_protocol

    return run_protocol(args)


def _cmd_align(args: argparse.Namespace) -> int:
    from biovl_core.report import run_align

    check_model_arguments(args)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise BioVLError(
            f"--out {args.out}: is an existing file; pass a folder for alignment.json/.csv/.vtt "
            "(it is created if missing)"
        )
    return run_align(args, config_from_args(args))


def _cmd_eval(args: argparse.Namespace) -> int:
    from biovl_core.report import check_eval_arguments, run_eval

    check_model_arguments(args)
    check_eval_arguments(args)
    return run_eval(args, config_from_args(args))


def _cmd_bench(args: argparse.Namespace) -> int:
    from biovl_core.bench.__main__ import main as bench_main

    bench_main(list(args.rest))
    return 0


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and dispatch; user errors print one clear line and exit 2."""
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        # --quiet: no banners or library warnings; the summary line still names the weights.
        logging.getLogger("biovl_core").setLevel(logging.ERROR)
        logging.getLogger().setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (BioVLError, MissingDependency) as exc:
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
