"""Boundaries finer than the grid in the real pipeline: a group of encoded recordings of one
protocol (a scene per step, changes off the 5 s grid), the members' embeddings in the cache,
the real decoder and the tiny CLIP model; ``align_video`` refines the new recording's change
points (``PipelineConfig.refine_boundaries``) and leaves the grid spans alone when it is off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biovl_core.align import GroupContext, GroupMember
from biovl_core.align.group import segment_labels, spans_of_labels
from biovl_core.align.refine import centred, looks_from_others
from biovl_core.embed import load_embedder
from biovl_core.io import alignment_to_dict
from biovl_core.pipeline import align_video, recording_similarity
from biovl_core.protocol import Protocol
from biovl_core.result import AlignmentResult
from biovl_core.synthetic import write_video
from tests.fixtures_embed import tiny_cfg

pytest.importorskip("av")

PROTOCOL = Protocol(title="t", steps=["Add water.", "Mix the tube.", "Spin it down."])
SEG = 5.0
K = len(PROTOCOL.steps)
# (change from step 0 to 1, change from step 1 to 2, duration): every change off the 5 s grid.
# Step 1 lasts about 15 s everywhere, so the lab's duration prior agrees with the grid's 3
# segments and the grid alignment is right: only its boundaries are coarse.
MEMBERS = [(8.1, 23.0, 40.0), (16.2, 31.4, 45.0)]
NEW = (12.3, 27.2, 40.0)


def _truth(first: float, second: float, duration: float) -> list[tuple[float, float]]:
    return [(0.0, first), (first, second), (second, duration)]


def _write(path: Path, first: float, second: float, duration: float) -> Path:
    """Steps 0-2 as scenes 1-3 (the same look in every recording: one seed), back to back."""
    scenes = [(a, b, s + 1) for s, (a, b) in enumerate(_truth(first, second, duration))]
    return write_video(
        path, duration, fps=10, size=(96, 64), scenes=scenes, gop=10, preset="ultrafast", seed=4
    ).path


@pytest.fixture(scope="module", params=["keyframe", "exact"])
def group_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """The members embedded into the cache (annotated), the new recording aligned with them,
    once refined and once on the grid, under each frame rule (keyframes every second)."""
    d = tmp_path_factory.mktemp("refine")
    cfg = tiny_cfg(sampling=request.param, decoder="pyav", cache_dir=str(d / "cache"))
    embedder = load_embedder(cfg)
    members, frames, labels = [], [], []
    for j, (a, b, dur) in enumerate(MEMBERS):
        rec = recording_similarity(
            _write(d / f"m{j}.mp4", a, b, dur), [*PROTOCOL.steps], cfg, embedder
        )
        assert rec.frames is not None
        truth = _truth(a, b, rec.duration_s)
        members.append(GroupMember(f"job-{j}", rec.video_sha256, tuple(truth)))
        frames.append(rec.frames)
        labels.append(segment_labels(truth, rec.frames.shape[0], SEG))  # type: ignore[arg-type]
    video = _write(d / "new.mp4", *NEW)
    group = GroupContext("proto", tuple(members))
    on = align_video(video, PROTOCOL, cfg, embedder=embedder, group=group)
    off = align_video(
        video, PROTOCOL, cfg.replace(refine_boundaries=False), embedder=embedder, group=group
    )
    new = recording_similarity(video, [*PROTOCOL.steps], cfg, embedder)  # from the cache
    return {"on": on, "off": off, "frames": [*frames, new.frames], "labels": labels}


def _changes(spans: list) -> list[float]:
    """The two change points: where step 0 ends and where step 1 ends."""
    return [spans[0][1], spans[1][1]]


def test_the_tiny_model_tells_the_step_scenes_apart(group_run: dict) -> None:
    # Not assumed: each of the new recording's segments wholly inside a step is nearest to that
    # step's look from the other recordings (a random CLIP still maps different scenes apart).
    frames = group_run["frames"]
    truth = segment_labels(_truth(*NEW), frames[-1].shape[0], SEG)  # type: ignore[arg-type]
    looks, _ = looks_from_others(frames, [*group_run["labels"], truth], len(frames) - 1, K)
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    x = centred(frames[-1], frames[-1].mean(axis=0))
    cos = x @ looks.T
    inside = [0, 1, 3, 4, 6, 7]  # segments 2 and 5 hold a change
    assert cos[inside].argmax(axis=1).tolist() == [truth[i] for i in inside], cos
    margins = [cos[i, truth[i]] - np.delete(cos[i], truth[i]).max() for i in inside]
    assert min(margins) > 0.1, margins


def test_grid_alignment_is_right_and_switched_off_it_stays_on_the_grid(group_run: dict) -> None:
    off: AlignmentResult = group_run["off"]  # type: ignore[assignment]
    assert off.method == "group" and off.group is not None and off.group["used"] is True
    # The scenario: each segment labelled by the step its frame shows; only the boundaries
    # are coarse.
    shown = np.asarray(off.frame_times)[:, 0]
    truth = [next(s for s, (a, b) in enumerate(_truth(*NEW)) if a <= t < b) for t in shown]
    assert off.labels.tolist() == truth, shown
    assert "refined" not in off.group and "refine" not in off.timings
    assert off.spans == spans_of_labels(off.labels, K, SEG, off.duration_s)


def test_refined_change_points_are_closer_to_the_truth(group_run: dict) -> None:
    on: AlignmentResult = group_run["on"]  # type: ignore[assignment]
    off: AlignmentResult = group_run["off"]  # type: ignore[assignment]
    assert on.labels.tolist() == off.labels.tolist() and on.method == "group"
    true = np.array(NEW[:2])
    grid, refined = np.array(_changes(off.spans)), np.array(_changes(on.spans))
    grid_err, refined_err = np.abs(grid - true), np.abs(refined - true)
    print(
        f"change points: truth {true}, grid {grid} (err {grid_err}), refined {refined} "
        f"(err {refined_err}); refine {on.timings['refine']:.2f} s"
    )
    assert refined_err.mean() < grid_err.mean(), (grid, refined)
    assert np.all(np.abs(refined - grid) <= SEG)  # each stays within its two segments
    assert on.group is not None and on.group["refined"] == int(np.sum(refined != grid)) >= 1
    assert on.timings["refine"] > 0.0
    # Order kept, no overlap, ends inside the recording; the deviation report stays on the grid.
    ends = [x for span in on.spans for x in span]  # type: ignore[union-attr]
    assert ends == sorted(ends) and ends[0] == 0.0 and ends[-1] == on.duration_s
    pairs = zip(on.spans[:-1], on.spans[1:], strict=True)
    assert all(a[1] <= b[0] for a, b in pairs)  # type: ignore[index]
    assert on.deviations == off.deviations and on.group["hidden_steps"] == []  # none skipped
    # The result JSON says so: an optional field of ``group``.
    assert alignment_to_dict(on)["group"]["refined"] == on.group["refined"]
