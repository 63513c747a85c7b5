"""Generated recordings: frame counter, scenes, and the dataset folder layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from biovl_core.synthetic import (
    COUNTER_BITS,
    RECORDING_STEPS,
    draw_counter,
    make_recording,
    read_frame_counter,
    write_video,
)


@pytest.mark.parametrize("index", [0, 1, 2**COUNTER_BITS - 1, 123_456])
@pytest.mark.parametrize("shape", [(240, 320), (320, 240), (96, 96)])
def test_counter_round_trip(index: int, shape: tuple[int, int]) -> None:
    img = np.random.default_rng(index).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    draw_counter(img, index)
    assert read_frame_counter(img) == index


def test_counter_rejects_a_wrongly_oriented_frame() -> None:
    img = np.full((200, 200, 3), 90, np.uint8)
    draw_counter(img, 5)
    assert read_frame_counter(np.rot90(img)) == -1
    with pytest.raises(ValueError, match="does not fit"):
        draw_counter(img, 2**COUNTER_BITS)


def _decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of a file as RGB."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_write_video_frames_carry_their_index_and_scene(tmp_path: Path) -> None:
    v = write_video(tmp_path / "v.mp4", 2.0, fps=10, size=(160, 120), scenes=[(1.0, 2.0, 3)])
    frames = _decode_all(v.path)
    assert len(frames) == len(v.frame_times) == 20
    assert v.duration_s == pytest.approx(2.0)
    assert [read_frame_counter(f) for f in frames] == list(range(20))
    top = [f[:60].astype(float).mean(axis=(0, 1)) for f in frames]  # above the counter band
    within = np.abs(top[2] - top[5]).sum()
    across = np.abs(top[5] - top[15]).sum()  # background vs scene 3
    assert across > 20 > within
    assert not np.array_equal(frames[12], frames[13])  # motion and noise, not a still image


def test_write_video_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotation"):
        write_video(tmp_path / "r.mp4", 1.0, rotation=45)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "o.mp4", 1.0, size=(161, 120))


def test_make_recording_writes_a_dataset_folder(tmp_path: Path) -> None:
    out = make_recording(
        tmp_path / "rec", experiment="pcr", seed=1, duration_s=30.0, size=(160, 120)
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "annotations.csv",
        "meta.json",
        "protocol.txt",
        "video.mp4",
    ]
    steps = [line.split(". ", 1)[1] for line in (out / "protocol.txt").read_text().splitlines()]
    assert steps == RECORDING_STEPS["pcr"]
    with open(out / "annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "start", "end"]
    assert [r["step"] for r in rows] == steps
    spans = [(float(r["start"]), float(r["end"])) for r in rows]
    assert all(0 <= a < b <= 30.0 for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    assert json.loads((out / "meta.json").read_text())["experiment"] == "pcr"
    with av.open(str(out / "video.mp4")) as c:
        assert float(c.streams.video[0].duration * c.streams.video[0].time_base) == pytest.approx(
            30.0, abs=0.1
        )


@pytest.mark.parametrize("experiment", sorted(set(RECORDING_STEPS) - {"pcr"}))
def test_other_experiments_have_ordered_spans(tmp_path: Path, experiment: str) -> None:
    out = make_recording(
        tmp_path / experiment, experiment=experiment, duration_s=20.0, size=(96, 96), fps=5
    )
    with open(out / "annotations.csv", newline="") as fh:
        spans = [(float(r["start"]), float(r["end"])) for r in csv.DictReader(fh)]
    assert len(spans) == len(RECORDING_STEPS[experiment])
    assert all(a < b for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] <= 20.0


def test_unknown_experiment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pcr"):
        make_recording(tmp_path, experiment="western_blot")
