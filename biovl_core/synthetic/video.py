"""Generated lab-like recordings for tests, benchmarks and demos.

Every frame carries a frame counter: a row of black/white cells near the bottom of
the frame's central square, so a test can read back *which* frame a decoder
returned, even after the sampler's resize-shorter-side + center-crop and rotation.
Each scene (protocol step, or background between steps) gets its own colours,
texture and moving shape, with camera shake and noise, so it looks video-like.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

COUNTER_BITS = 20
_CELLS = COUNTER_BITS + 2  # white sentinel, black sentinel, then the bits MSB first
_BAND_X0, _BAND_X1 = 0.06, 0.94  # fractions of the central square's side
_BAND_Y0, _BAND_Y1 = 0.80, 0.88
_SHAKE = 6  # pixels of simulated head movement
_NOISE_VARIANTS = 6

Scene = tuple[float, float, int]


@dataclass(frozen=True)
class SyntheticVideo:
    """What was written: the file and the ground truth a test checks a decoder against."""

    path: Path
    frame_times: np.ndarray  # float64 [F], presentation time of each frame (s), from 0
    size: tuple[int, int]  # display (width, height), after rotation
    rotation: int  # counter-clockwise degrees the coded picture is turned for display
    fps: float  # nominal frame rate (mean rate for variable frame rate)

    @property
    def duration_s(self) -> float:
        """End of the last frame's presentation interval."""
        if len(self.frame_times) > 1:
            return float(self.frame_times[-1] + np.diff(self.frame_times)[-1])
        return float(1.0 / self.fps)


def counter_bits(index: int) -> np.ndarray:
    """The cell colours (1 white, 0 black) encoding a frame index."""
    if not 0 <= index < 2**COUNTER_BITS:
        raise ValueError(f"frame index {index} does not fit the {COUNTER_BITS}-bit counter")
    bits = [(index >> (COUNTER_BITS - 1 - b)) & 1 for b in range(COUNTER_BITS)]
    return np.array([1, 0, *bits], dtype=np.uint8)


def _band_geometry(width: int, height: int) -> tuple[int, int, float, int, int]:
    """(x_start, y0, cell_width, y1, side) of the counter band in a display frame."""
    side = min(width, height)
    ox, oy = (width - side) / 2.0, (height - side) / 2.0
    x_start = ox + _BAND_X0 * side
    cell = (_BAND_X1 - _BAND_X0) * side / _CELLS
    return (
        int(round(x_start)),
        int(round(oy + _BAND_Y0 * side)),
        cell,
        int(round(oy + _BAND_Y1 * side)),
        side,
    )


def draw_counter(image: np.ndarray, index: int) -> None:
    """Paint the frame counter for `index` into a display-oriented RGB image, in place."""
    h, w = image.shape[:2]
    x_start, y0, cell, y1, _ = _band_geometry(w, h)
    for c, bit in enumerate(counter_bits(index)):
        xa = int(round(x_start + c * cell))
        xb = int(round(x_start + (c + 1) * cell))
        image[y0:y1, xa:xb] = 255 if bit else 0


def read_frame_counter(image: np.ndarray) -> int:
    """Read the frame index painted by `draw_counter` from a display-oriented RGB frame.

    Works on the full frame or on any resize of its central square (what the samplers
    return). Returns -1 when the sentinel cells are not where they should be (wrong
    orientation, wrong crop, or not a synthetic frame).
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    x_start, y0, cell, y1, _ = _band_geometry(w, h)
    luma = (
        img[..., :3].astype(np.float32).mean(axis=-1) if img.ndim == 3 else img.astype(np.float32)
    )
    ym = (y0 + y1) / 2.0
    yh = max(1.0, (y1 - y0) / 4.0)
    ya, yb = int(round(ym - yh)), int(round(ym + yh))
    values = []
    for c in range(_CELLS):
        xm = x_start + (c + 0.5) * cell
        xh = max(1.0, cell / 4.0)
        values.append(luma[ya:yb, int(round(xm - xh)) : int(round(xm + xh))].mean())
    bits = [1 if v > 127.5 else 0 for v in values]
    if bits[0] != 1 or bits[1] != 0:
        return -1
    out = 0
    for b in bits[2:]:
        out = (out << 1) | b
    return out


class _SceneRenderer:
    """Renders display-oriented RGB frames whose look depends on the scene id."""

    def __init__(self, width: int, height: int, seed: int, motion: float, noise: float) -> None:
        self.width, self.height = width, height
        self.seed = seed
        self.motion = motion
        self.noise = noise
        self._canvases: dict[int, list[np.ndarray]] = {}
        yy, xx = np.mgrid[0 : height + 2 * _SHAKE, 0 : width + 2 * _SHAKE].astype(np.float32)
        self._grid = (yy / max(height, 1), xx / max(width, 1))

    def _canvases_for(self, scene_id: int) -> list[np.ndarray]:
        """Background variants (texture + noise) of one scene, cached."""
        if scene_id in self._canvases:
            return self._canvases[scene_id]
        rng = np.random.default_rng([self.seed, scene_id])
        yy, xx = self._grid
        base = rng.uniform(40, 215, size=3).astype(np.float32)
        accent = rng.uniform(0, 255, size=3).astype(np.float32)
        freq = rng.uniform(2.0, 9.0, size=2)
        angle = rng.uniform(0, math.pi)
        wave = np.sin(
            2 * math.pi * (freq[0] * xx * math.cos(angle) + freq[1] * yy * math.sin(angle))
        )
        mix = (0.5 + 0.5 * wave)[..., None] * 0.45
        texture = base * (1 - mix) + accent * mix
        # a "bench": darker lower third, like a lab table seen from a head camera
        texture *= np.where(yy[..., None] > 0.62, 0.7, 1.0)
        variants = []
        for _ in range(_NOISE_VARIANTS if self.noise > 0 else 1):
            noise = (
                rng.normal(0.0, self.noise, size=texture.shape[:2])[..., None]
                if self.noise > 0
                else 0.0
            )
            variants.append(np.clip(texture + noise, 0, 255).astype(np.uint8))
        self._canvases[scene_id] = variants
        return variants

    def render(self, scene_id: int, index: int, t: float) -> np.ndarray:
        """One frame of `scene_id` at time `t` (seconds), frame number `index`."""
        variants = self._canvases_for(scene_id)
        canvas = variants[index % len(variants)]
        m = self.motion
        dx = int(round(_SHAKE * m * math.sin(1.3 * t + scene_id)))
        dy = int(round(_SHAKE * m * math.sin(0.9 * t + 2 * scene_id)))
        frame = canvas[
            _SHAKE + dy : _SHAKE + dy + self.height, _SHAKE + dx : _SHAKE + dx + self.width
        ].copy()
        rng = np.random.default_rng([self.seed, scene_id, 7])
        color = rng.integers(0, 256, size=3, dtype=np.uint8)
        side = min(self.width, self.height)
        r = max(3, int(side * rng.uniform(0.08, 0.16)))
        cx = int(self.width * (0.5 + 0.3 * math.sin(m * (0.7 + 0.1 * scene_id) * t + scene_id)))
        cy = int(self.height * (0.4 + 0.2 * math.cos(m * (0.5 + 0.07 * scene_id) * t)))
        x0, x1 = max(0, cx - r), min(self.width, cx + r)
        y0, y1 = max(0, cy - r), min(self.height, cy + r)
        if scene_id % 2 == 0:  # a round "tube rack" for even scenes, a square "bottle" for odd ones
            yy, xx = np.ogrid[y0:y1, x0:x1]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            frame[y0:y1, x0:x1][mask] = color
        else:
            frame[y0:y1, x0:x1] = color
        return frame


class _Grain:
    """Fresh sensor grain per frame: two noise planes mixed at random offsets (cheap, and never
    a shifted copy of an earlier frame, so an encoder cannot predict it)."""

    def __init__(self, width: int, height: int, std: float, seed: int) -> None:
        self.width, self.height = width, height
        self.rng = np.random.default_rng([seed, 31])
        pad = 64
        shape = (height + pad, width + pad)
        scale = std / math.sqrt(2.0)
        self.planes = [
            np.clip(self.rng.normal(0.0, scale, size=shape), -127, 127).astype(np.int16)
            for _ in range(2)
        ]
        self.pad = pad

    def apply(self, img: np.ndarray) -> np.ndarray:
        """The frame with this frame's grain added (same on every channel: luma grain)."""
        oy, ox = self.rng.integers(0, self.pad, size=(2, 2))
        h, w = self.height, self.width
        a = self.planes[0][oy[0] : oy[0] + h, ox[0] : ox[0] + w]
        b = self.planes[1][oy[1] : oy[1] + h, ox[1] : ox[1] + w]
        return np.clip(img.astype(np.int16) + (a + b)[..., None], 0, 255).astype(np.uint8)


def _scene_at(scenes: Sequence[Scene] | None, t: float) -> int:
    """Scene id shown at time t (0 = background when no scene covers t)."""
    for start, end, scene_id in scenes or ():
        if start <= t < end:
            return int(scene_id)
    return 0


def _frame_times(
    duration_s: float, fps: float, variable_frame_rate: bool, seed: int
) -> tuple[np.ndarray, Fraction]:
    """Presentation times (in ticks) of every frame, and the tick length."""
    if variable_frame_rate:
        tick = Fraction(1, 90000)
        rng = np.random.default_rng([seed, 99])
        mean = 90000.0 / fps
        steps = []
        total = 0
        while total < duration_s * 90000:
            step = int(round(mean * rng.choice([0.5, 1.0, 1.5])))
            steps.append(step)
            total += step
        ticks = np.concatenate([[0], np.cumsum(steps[:-1])]).astype(np.int64)
        return ticks, tick
    rate = Fraction(fps).limit_denominator(1001)
    count = max(1, int(round(duration_s * float(rate))))
    return np.arange(count, dtype=np.int64), 1 / rate


def write_video(
    path: str | Path,
    duration_s: float,
    fps: float = 30.0,
    size: tuple[int, int] = (320, 240),
    scenes: Sequence[Scene] | None = None,
    rotation: int = 0,
    variable_frame_rate: bool = False,
    codec: str = "h264",
    gop: int = 30,
    preset: str = "superfast",
    crf: int = 23,
    motion: float = 1.0,
    noise: float = 2.5,
    seed: int = 0,
    grain: float = 0.0,
    x264_params: str | None = None,
    profile: str | None = None,
) -> SyntheticVideo:
    """Write an MP4 of `duration_s` seconds; `size` and the counter are in display orientation.

    `rotation` (0/90/180/270, counter-clockwise) is stored as a display matrix, and the
    coded picture is turned the other way, so a decoder that honours the matrix shows
    the counter upright. With `variable_frame_rate` the frame durations vary randomly
    between 0.5x and 1.5x of 1/fps. `codec` "h264" uses libx264 (B-frames unless the
    preset is "ultrafast"); "vp9" uses libvpx-vp9 (hidden alt-ref frames, what DALI's CPU
    decoder can read); "mpeg4" is also accepted. `motion` scales camera shake and
    object speed, `noise` the sensor noise (std, grey levels); lower both to encode faster.
    `grain` adds fresh noise to every frame (std, grey levels) so the bitrate is real;
    `x264_params` and `profile` go to libx264 (``biovl_core.synthetic.camera`` uses them).
    """
    import av

    if rotation % 90 or rotation % 360 not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270 degrees, not {rotation}")
    if duration_s <= 0 or fps <= 0:
        raise ValueError(f"duration_s and fps must be positive (got {duration_s}, {fps})")
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"size {size} must have even width and height (yuv420p)")
    rotation %= 360
    turns = rotation // 90
    coded_w, coded_h = (height, width) if turns % 2 else (width, height)
    ticks, tick = _frame_times(duration_s, fps, variable_frame_rate, seed)
    renderer = _SceneRenderer(width, height, seed, motion, noise)
    grainer = _Grain(width, height, grain, seed) if grain > 0 else None
    encoder = {"h264": "libx264", "vp9": "libvpx-vp9"}.get(codec, codec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = coded_w, coded_h, "yuv420p"
        stream.gop_size = gop
        stream.codec_context.time_base = tick
        if encoder == "libx264":
            options = {"preset": preset, "crf": str(crf)}
            if x264_params:
                options = {"preset": preset, "x264-params": x264_params}
            if profile:
                options["profile"] = profile
            stream.codec_context.options = options
        if rotation:
            stream.set_display_rotation(rotation)
        for i, tk in enumerate(ticks):
            t = float(tk * tick)
            img = renderer.render(_scene_at(scenes, t), i, t)
            if grainer is not None:
                img = grainer.apply(img)
            draw_counter(img, i)
            if turns:
                img = np.ascontiguousarray(np.rot90(img, k=-turns))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = int(tk)
            frame.time_base = tick
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    times = np.array([float(tk * tick) for tk in ticks], dtype=np.float64)
    mean_fps = (
        (len(times) - 1) / times[-1] if variable_frame_rate and len(times) > 1 else float(fps)
    )
    return SyntheticVideo(
        path=path, frame_times=times, size=(width, height), rotation=rotation, fps=mean_fps
    )


# BioVL's PCR example (seconds), from a recording of about 280 s.
_PCR_STEPS = [
    ("Add sterile distilled water.", 30, 45),
    ("Add primer1.", 64, 99),
    ("Add primer2.", 106, 130),
    ("Add template.", 149, 173),
    ("Add PrimeSTAR.", 190, 238),
    ("Set in DNA engine.", 260, 266),
]
_PCR_LENGTH_S = 280.0

# The step list of each generated recording (not the similarity generator's EXPERIMENTS profiles).
RECORDING_STEPS: dict[str, list[str]] = {
    "pcr": [s for s, _, _ in _PCR_STEPS],
    "dna_extraction": [
        "Add 300 µl of cell lysis solution.",
        "Invert 4 times to mix.",
        "Add 10 µl of alkaline protease solution.",
        "Incubate at 55 °C.",
        "Add 100 µl of protein precipitation solution.",
        "Centrifuge for 3 minutes.",
        "Pour the supernatant into a new tube.",
        "Add 300 µl of isopropanol.",
        "Wash the pellet with 70% ethanol.",
    ],
    "agarose_gel": [
        "Weigh 1 g of agarose.",
        "Add 100 ml of TAE buffer.",
        "Heat in the microwave until dissolved.",
        "Swirl the flask.",
        "Cool the solution to 60 °C.",
        "Add 5 µl of DNA stain.",
        "Pour the gel into the tray.",
        "Insert the comb.",
        "Let the gel solidify.",
        "Remove the comb.",
    ],
    "miniprep": [
        "Centrifuge the culture.",
        "Discard the supernatant.",
        "Resuspend the pellet in 250 µl of buffer P1.",
        "Add 250 µl of buffer P2.",
        "Invert the tube 6 times.",
        "Add 350 µl of buffer N3.",
        "Invert the tube 6 times.",
        "Centrifuge for 10 minutes.",
        "Apply the supernatant to the spin column.",
        "Centrifuge for 1 minute.",
        "Discard the flow-through.",
        "Add 750 µl of buffer PE.",
        "Centrifuge for 1 minute.",
        "Place the column in a clean tube.",
        "Add 50 µl of buffer EB.",
        "Centrifuge for 1 minute.",
    ],
}
_DEFAULT_DURATION_S = {"pcr": 60.0, "dna_extraction": 90.0, "agarose_gel": 100.0, "miniprep": 160.0}


def _step_spans(experiment: str, duration_s: float, seed: int) -> list[tuple[float, float]]:
    """Annotated (start, end) seconds of each step, with background gaps between steps."""
    if experiment == "pcr":
        scale = duration_s / _PCR_LENGTH_S
        return [(round(a * scale, 1), round(b * scale, 1)) for _, a, b in _PCR_STEPS]
    n = len(RECORDING_STEPS[experiment])
    rng = np.random.default_rng([seed, n])
    weights = rng.uniform(0.6, 1.6, size=n)
    gaps = rng.uniform(0.15, 0.5, size=n + 1)
    unit = duration_s / (weights.sum() + gaps.sum())
    spans, t = [], gaps[0] * unit
    for w, g in zip(weights, gaps[1:], strict=True):
        spans.append((round(t, 1), round(t + w * unit, 1)))
        t += (w + g) * unit
    return spans


def make_recording(
    directory: str | Path,
    experiment: str = "pcr",
    seed: int = 0,
    duration_s: float | None = None,
    size: tuple[int, int] = (320, 240),
    fps: float = 15.0,
) -> Path:
    """Write one synthetic recording folder: video.mp4, protocol.txt, annotations.csv, meta.json.

    Each annotated step is rendered as its own scene and the gaps between steps as a
    background scene, so a model that tells scenes apart can align the protocol.
    """
    if experiment not in RECORDING_STEPS:
        raise ValueError(
            f"unknown experiment {experiment!r}; choose one of {sorted(RECORDING_STEPS)}"
        )
    duration_s = float(duration_s or _DEFAULT_DURATION_S[experiment])
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    steps = RECORDING_STEPS[experiment]
    spans = _step_spans(experiment, duration_s, seed)
    scenes = [(a, b, i + 1) for i, (a, b) in enumerate(spans)]
    write_video(out / "video.mp4", duration_s, fps=fps, size=size, scenes=scenes, seed=seed)
    (out / "protocol.txt").write_text(
        "".join(f"{i + 1}. {s}\n" for i, s in enumerate(steps)), encoding="utf-8"
    )
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "start", "end"])
        for step, (a, b) in zip(steps, spans, strict=True):
            writer.writerow([step, a, b])
    meta = {
        "experiment": experiment,
        "seed": seed,
        "duration_s": duration_s,
        "fps": fps,
        "synthetic": True,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
