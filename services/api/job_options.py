"""A job's options checked before it is queued: the allowed keys, the method and its parameters,
and whether the recording can be aligned with them at all (limits and K <= N by arithmetic)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from biovl_core.errors import BioVLError
from services.api.errors import HTTPProblem
from services.api.form import FormPart
from services.groups import check_protocol_id
from services.settings import JOB_OPTION_KEYS, ServiceSettings


def check_options(settings: ServiceSettings, part: FormPart | None) -> dict[str, Any]:
    """Parse and check the ``options`` JSON (only JOB_OPTION_KEYS; method checked later)."""
    if part is None or (not part.is_file and not part.value.strip()):
        return {}
    if part.is_file:
        raise HTTPProblem(422, "options must be a JSON text field, not a file")
    try:
        options = json.loads(part.value)
    except RecursionError:
        raise HTTPProblem(422, 'options is nested too deeply; send e.g. {"method": "nw"}') from None
    except ValueError as exc:
        raise HTTPProblem(422, f"options is not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise HTTPProblem(422, 'options must be a JSON object, e.g. {"method": "nw"}')
    unknown = sorted(set(options) - JOB_OPTION_KEYS)
    if unknown:
        raise HTTPProblem(
            422, f"options {unknown} cannot be set per job; allowed: {sorted(JOB_OPTION_KEYS)}"
        )
    if "protocol_id" in options:
        try:
            check_protocol_id(options["protocol_id"])
        except ValueError as exc:
            raise HTTPProblem(422, str(exc)) from None
    seg = options.get("segment_seconds")
    if seg is not None and (
        not isinstance(seg, int | float) or isinstance(seg, bool) or not 0.5 <= seg <= 60
    ):
        raise HTTPProblem(422, f"segment_seconds must be a number from 0.5 to 60, got {seg!r}")
    if not isinstance(options.get("method_params", {}), dict):
        raise HTTPProblem(422, "method_params must be a JSON object")
    try:
        settings.pipeline_config(**options)
    except (ValueError, TypeError) as exc:
        raise HTTPProblem(422, f"options: {exc}") from None
    return options


def check_alignable(
    settings: ServiceSettings,
    options: dict[str, Any],
    num_steps: int,
    duration_s: float,
    filename: str | None,
) -> tuple[dict[str, Any], str | None]:
    """Probe limits and K <= N by arithmetic, then the method's parameter checks on a 1 x 1
    matrix: 422 with the limit and the fix, before any work scales with the video.

    A short recording with more steps than segments gets shorter segments, as ``biovl
    align`` gives it (``fit_segment_seconds``): the options returned carry that length, so
    the worker aligns what was checked here, and the note says so."""
    from biovl_core.align import align, resolve_method
    from biovl_core.segment_fit import MIN_SEGMENT_SECONDS, fit_segment_seconds
    from biovl_core.video import segment_count

    s = settings
    if duration_s > s.max_video_duration_s:
        raise HTTPProblem(
            422,
            f"video {filename!r} lasts {duration_s / 3600:.1f} h ({duration_s:.0f} s); the "
            f"limit is {s.max_video_duration_s / 3600:.1f} h (max_video_duration_s): split "
            "the recording into shorter parts, or check the file (a broken timestamp can "
            "make a short file claim a huge duration)",
        )
    cfg = s.pipeline_config(**options)
    try:
        spec = resolve_method(cfg.method)
    except BioVLError as exc:
        raise HTTPProblem(422, f"options: {exc}") from None
    n = segment_count(duration_s, cfg.segment_seconds)
    if n > s.max_segments:
        raise HTTPProblem(
            422,
            f"video {filename!r} makes {n} segments of {cfg.segment_seconds:g} s; the limit "
            f"is {s.max_segments} (max_segments): use longer segments (options "
            "segment_seconds) or a shorter recording",
        )
    try:
        fitted, note = fit_segment_seconds(cfg, num_steps, duration_s, repr(filename))
    except BioVLError:
        most = segment_count(duration_s, MIN_SEGMENT_SECONDS)
        raise HTTPProblem(
            422,
            f"this recording cannot be aligned with these options: {num_steps} steps but "
            f"only {n} segments ({duration_s:.1f} s of video at {cfg.segment_seconds:g} s "
            f"per segment), and even {MIN_SEGMENT_SECONDS:g} s segments give only {most}; "
            f"method {spec.name!r} gives every step at least one segment: merge steps, "
            "or use method 'uniform' (options)",
        ) from None
    if note is not None:
        options = {**options, "segment_seconds": fitted.segment_seconds}
        note = (
            f"{num_steps} steps but only {n} segments of {cfg.segment_seconds:g} s in "
            f"{duration_s:.1f} s of video: aligned with {fitted.segment_seconds:g} s "
            "segments, as biovl align does (set options segment_seconds to choose)"
        )
        n = segment_count(duration_s, fitted.segment_seconds)
    params = scalar_params(fitted.method_params, num_steps, n)
    try:
        align(
            np.zeros((1, 1), dtype=np.float32),
            method=spec.name,
            segment_seconds=fitted.segment_seconds,
            duration_s=fitted.segment_seconds,
            backend="numpy",
            **params,
        )
    except (ValueError, TypeError) as exc:
        raise HTTPProblem(422, f"options: {exc}") from None
    return options, note


def scalar_params(params: dict[str, Any], num_steps: int, n: int) -> dict[str, Any]:
    """``params`` less its per-step / per-segment lists, whose lengths are checked here (422);
    what is left can be checked on a 1 x 1 matrix."""
    sizes = {"steps": (num_steps, "step"), "drop_cost": (n, "segment")}
    out = dict(params)
    for name, (size, unit) in sizes.items():
        value = out.get(name)
        if not isinstance(value, list):
            continue
        if len(value) != size:
            raise HTTPProblem(
                422,
                f"method_params.{name} has {len(value)} values for {size} {unit}s of this "
                f"upload; give one per {unit}",
            )
        del out[name]  # the values themselves are checked by the worker's full-size run
    return out
