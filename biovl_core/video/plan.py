"""Read plans for the GPU decoder: which frames, keyframe ranges and bytes each batch needs.

All of it runs on the CPU without decoding. `index_packets` reads the container's packet
list once per video (one PyAV demux pass: pts, dts, byte position, size, keyframe flag).
`plan_reads` turns a batch of sample timestamps into the frames they show (the frame rule
of `biovl_core.video`), the runs of packets that decode them (each run starts at a keyframe
and stops after the last packet a wanted frame needs, in decode order) and the byte ranges
of the file those packets occupy. `write_clip` reads just those bytes and remuxes them
(stream copy) into a short in-memory MP4, and `ReadPlan.clip_frames` says which frames of
that clip, in presentation order, are the wanted ones: what DALI's ``frames`` argument takes.

Short clips that start at a keyframe sidestep DALI's known weak spots: no seek inside a long
file (decoding slowed down the further into a 510 s file it went, NVIDIA/DALI#5672), no
rewind to a non-IDR keyframe (#3387), and frames chosen by index from exact pts read here,
not by timestamps DALI predicts from a frame rate (its hangs on variable frame rate, #1041).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from biovl_core.device import optional_import
from biovl_core.video.container import (
    AV_HINT,
    as_timestamps,
    check_file,
    open_container,
    video_error,
    video_stream,
)
from biovl_core.video.info import frame_index_at as _frame_index_at

RAW_CHECK_PACKETS = 8
"""Packets whose bytes at (pos, size) are compared with the demuxer's, to trust raw reads."""


@dataclass(frozen=True)
class PacketIndex:
    """Every video packet of one file, in decode order, plus what is derived from it once."""

    path: str
    pts: np.ndarray  # int64 [P], stream time base
    dts: np.ndarray  # int64 [P]
    pos: np.ndarray  # int64 [P], byte offset in the file
    size: np.ndarray  # int64 [P], bytes
    keyframe: np.ndarray  # bool [P]
    duration: np.ndarray  # int64 [P], stream time base: how long each frame is shown
    time_base: Fraction
    start_pts: int
    raw_bytes: bool  # the file's bytes at (pos, size) are the packets (MP4/MOV; not MKV)
    template: bytes  # a one-packet MP4 carrying the stream's codec parameters, for remuxing
    frame_packet: np.ndarray  # int64 [F]: packet of each frame, frames in presentation order
    frame_times: np.ndarray  # float64 [F]: presentation time (s from the first frame), sorted
    gop_start: np.ndarray  # int64 [G]: packet index where each keyframe range starts
    leading: np.ndarray  # bool [P]: presented before its range's keyframe (open GOP)

    @property
    def file_bytes(self) -> int:
        """Size of the video file."""
        return Path(self.path).stat().st_size


def _frame_durations(pts: np.ndarray, demuxed: np.ndarray | None) -> np.ndarray:
    """How long each packet's frame is shown: the demuxer's duration where it gave one, else
    the gap to the next frame in presentation order (the last frame: the median gap).

    The remuxed clip must carry them: without a duration the MP4 muxer's edit list ends at the
    last frame's start, the demuxer marks that frame discarded, and decoders drop it (seen with
    VP9 clips, where PyAV returned 47 of 48 frames and DALI a blank last frame).
    """
    order = np.argsort(pts, kind="stable")
    gaps = np.diff(pts[order])
    fallback = np.empty(len(pts), dtype=np.int64)
    fallback[order] = np.append(gaps, int(np.median(gaps)) if len(gaps) else 1)
    fallback = np.maximum(fallback, 1)
    if demuxed is None:
        return fallback
    demuxed = np.asarray(demuxed, dtype=np.int64)
    return np.where(demuxed > 0, demuxed, fallback)


def _derived(pts: np.ndarray, keyframe: np.ndarray) -> tuple[np.ndarray, ...]:
    """(frame_packet, gop_start, leading) from packet pts and keyframe flags, vectorised."""
    frame_packet = np.argsort(pts, kind="stable").astype(np.int64)
    gop_start = np.unique(np.concatenate(([0], np.flatnonzero(keyframe)))).astype(np.int64)
    gop_of = np.searchsorted(gop_start, np.arange(len(pts)), side="right") - 1
    leading = pts < pts[gop_start[gop_of]]
    return frame_packet, gop_start, leading


def packet_index_from_arrays(
    path: str,
    pts: np.ndarray,
    dts: np.ndarray,
    pos: np.ndarray,
    size: np.ndarray,
    keyframe: np.ndarray,
    time_base: Fraction,
    start_pts: int,
    raw_bytes: bool = True,
    template: bytes = b"",
    duration: np.ndarray | None = None,
) -> PacketIndex:
    """A PacketIndex from decode-order packet arrays (what `index_packets` reads from a file);
    `duration` (per packet, 0 where unknown) defaults to the gaps between presentation times."""
    pts = np.asarray(pts, dtype=np.int64)
    keyframe = np.asarray(keyframe, dtype=bool)
    frame_packet, gop_start, leading = _derived(pts, keyframe)
    times = (pts[frame_packet] - start_pts).astype(np.float64) * float(time_base)
    return PacketIndex(
        path=str(path),
        pts=pts,
        dts=np.asarray(dts, dtype=np.int64),
        pos=np.asarray(pos, dtype=np.int64),
        size=np.asarray(size, dtype=np.int64),
        keyframe=keyframe,
        duration=_frame_durations(pts, duration),
        time_base=Fraction(time_base),
        start_pts=int(start_pts),
        raw_bytes=raw_bytes,
        template=template,
        frame_packet=frame_packet,
        frame_times=times,
        gop_start=gop_start,
        leading=leading,
    )


def index_packets(path: str | Path) -> PacketIndex:
    """Read the packet list of the first video stream (one demux pass, no decoding)."""
    p = check_file(path)
    av = optional_import("av", AV_HINT)
    rows: list[tuple[int, int, int, int, bool, int]] = []
    raw_ok = True
    with open_container(p) as container, open(p, "rb") as fh:
        stream = video_stream(container, p)
        tb = stream.time_base or Fraction(1, 1_000_000)
        template = io.BytesIO()
        out = av.open(template, "w", format="mp4")
        out_stream = out.add_stream_from_template(stream)
        try:
            for packet in container.demux(stream):
                if not packet.size or packet.pts is None or getattr(packet, "is_discard", False):
                    continue
                dts = packet.dts if packet.dts is not None else packet.pts
                pos = packet.pos if packet.pos is not None else -1
                if len(rows) < RAW_CHECK_PACKETS:
                    fh.seek(max(pos, 0))
                    raw_ok = raw_ok and pos >= 0 and fh.read(packet.size) == bytes(packet)
                if not rows:
                    packet.stream = out_stream
                    out.mux(packet)
                duration = packet.duration or 0
                rows.append((packet.pts, dts, pos, packet.size, bool(packet.is_keyframe), duration))
        except av.error.FFmpegError as exc:
            raise video_error(
                p, f"is corrupt or truncated ({exc})", "Re-copy or re-upload the recording"
            ) from exc
        finally:
            out.close()
        start = stream.start_time
    if not rows:
        raise video_error(
            p, "has a video stream but no frames", "Record or upload a non-empty video"
        )
    arr = np.array(rows, dtype=np.int64)
    pts = arr[:, 0]
    return packet_index_from_arrays(
        str(p),
        pts,
        arr[:, 1],
        arr[:, 2],
        arr[:, 3],
        arr[:, 4].astype(bool),
        Fraction(tb),
        int(start if start is not None else pts.min()),
        raw_bytes=raw_ok,
        template=template.getvalue(),
        duration=arr[:, 5],
    )


@dataclass(frozen=True)
class ReadPlan:
    """What one batch asks of the file: frames, packet runs, byte ranges, and clip indices."""

    frames: np.ndarray  # int64 [U]: wanted frames (presentation order in the file), sorted
    inverse: np.ndarray  # int64 [b*k]: position in `frames` of each flat timestamp
    runs: np.ndarray  # int64 [R, 2]: packet ranges [first, stop), first is a keyframe
    packets: np.ndarray  # int64 [Q]: packets to feed, decode order (runs minus leading ones)
    clip_frames: np.ndarray  # int64 [U]: index of each wanted frame in the clip's frames
    byte_ranges: np.ndarray  # int64 [B, 2]: merged [start, end) file offsets of `packets`

    @property
    def bytes_read(self) -> int:
        """Bytes of the file the plan reads."""
        return int((self.byte_ranges[:, 1] - self.byte_ranges[:, 0]).sum())


def _merge(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Merge [start, end) intervals that touch or overlap: int64 [B, 2], sorted."""
    if not len(starts):
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > e[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(s) - 1)
    return np.stack([s[first], e[last]], axis=1).astype(np.int64)


def plan_reads(index: PacketIndex, timestamps: np.ndarray) -> ReadPlan:
    """The read plan for sample timestamps [b, k] (seconds from the first frame).

    A wanted frame needs its keyframe range from the keyframe up to its own packet (decode
    order); a frame presented before its range's keyframe (a leading picture of an open GOP)
    needs the range before as well. Frames whose ranges overlap share one run. Leading pictures of
    a run's first range are left out: they reference frames the run does not hold.
    """
    ts = as_timestamps(timestamps)
    wanted = _frame_index_at(index.frame_times, ts.ravel())
    frames, inverse = np.unique(wanted, return_inverse=True)
    packet = index.frame_packet[frames]
    gop = np.searchsorted(index.gop_start, packet, side="right") - 1
    first_gop = gop - (index.leading[packet] & (gop > 0))
    # per wanted frame: keyframe ranges [first_gop, gop] and the last packet it needs
    order = np.lexsort((packet, first_gop))
    lo, hi, need = first_gop[order], gop[order], packet[order]
    reach = np.maximum.accumulate(hi)
    new = np.ones(len(lo), dtype=bool)
    new[1:] = lo[1:] > reach[:-1]
    starts = np.flatnonzero(new)
    first_range = lo[starts]
    run_stop = np.maximum.reduceat(need, starts) + 1 if len(starts) else np.zeros(0, np.int64)
    runs = np.stack([index.gop_start[first_range], run_stop], axis=1).astype(np.int64)
    range_end = np.append(index.gop_start[1:], len(index.pts))[first_range]
    pieces = []
    for (first, stop), end in zip(runs.tolist(), range_end.tolist(), strict=True):
        ids = np.arange(first, stop, dtype=np.int64)
        pieces.append(ids[~(index.leading[ids] & (ids < end))])
    packets = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    # the clip presents its packets in pts order; a wanted frame's clip index is its pts rank
    clip_pts = np.sort(index.pts[packets])
    clip_frames = np.searchsorted(clip_pts, index.pts[packet]).astype(np.int64)
    byte_ranges = _merge(index.pos[packets], index.pos[packets] + index.size[packets])
    return ReadPlan(frames, inverse.astype(np.int64), runs, packets, clip_frames, byte_ranges)


def write_clip(index: PacketIndex, plan: ReadPlan) -> bytes:
    """The plan's packets, read from their byte ranges only, remuxed into an in-memory MP4."""
    if not index.raw_bytes:
        raise video_error(
            index.path,
            "its container does not store packets as plain byte ranges (e.g. Matroska), so a "
            "read plan cannot be remuxed",
            "Use the PyAV decoder for it, or remux it to MP4: `ffmpeg -i IN -c copy OUT.mp4`",
        )
    av = optional_import("av", AV_HINT)
    blobs: dict[int, bytes] = {}
    with open(index.path, "rb") as fh:
        for start, end in plan.byte_ranges.tolist():
            fh.seek(start)
            blobs[start] = fh.read(end - start)
    starts = plan.byte_ranges[:, 0]
    out_buf = io.BytesIO()
    with av.open(io.BytesIO(index.template)) as template:
        source = template.streams.video[0]
        with av.open(out_buf, "w", format="mp4") as out:
            stream = out.add_stream_from_template(source)
            for i in plan.packets.tolist():
                pos, size = int(index.pos[i]), int(index.size[i])
                r = int(starts[np.searchsorted(starts, pos, side="right") - 1])
                data = blobs[r][pos - r : pos - r + size]
                packet = av.Packet(data)
                packet.pts, packet.dts = int(index.pts[i]), int(index.dts[i])
                packet.duration = int(index.duration[i])
                packet.is_keyframe = bool(index.keyframe[i])
                packet.time_base = index.time_base
                packet.stream = stream
                out.mux(packet)
    return out_buf.getvalue()
