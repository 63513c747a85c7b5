"""One open recording read packet by packet: keyframes decoded alone, other frames decoded
forward from their keyframe, and nothing else demuxed or decoded that a timestamp does not need.

For a timestamp ``t`` the reader finds, in the container index, the keyframe at or before
``t``. When ``t`` is that keyframe's own time, only the keyframe's packet goes to the decoder
(drained at once; everything else is skipped, the equivalent of ``skip_frame = "NONKEY"``
without even reading the other packets). Otherwise it decodes forward from that keyframe,
continuing where the previous timestamp left off when both lie in one keyframe range, so a
file with one keyframe is decoded once from start to end, never from the start per sample.

Where the index came from the header (MP4 sample tables, Matroska cues) the reader seeks to
keyframes; after a demux scan (MPEG-TS, whose seeks land on arbitrary packets) it only moves
forward, skipping packets without decoding them. Frames decoded per timestamp stay within
one keyframe range, and over a whole job within the file's frame count plus one range per
keyframe sample (`DecodeStats` counts them, and the bytes read).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from biovl_core.device import optional_import
from biovl_core.video.container import AV_HINT, TIME_EPS, open_container, video_error, video_stream
from biovl_core.video.index import ContainerIndex, CountingFile
from biovl_core.video.sampler import DecodeStats

MAX_SEEK_BACKOFF_S = 64.0


class PacketReader:
    """Decodes the frame shown at each (ascending) timestamp of one file."""

    def __init__(self, index: ContainerIndex, stats: DecodeStats, threads: int = 0) -> None:
        self.av = optional_import("av", AV_HINT)
        self.path = Path(index.path)
        self.index = index
        self.stats = stats
        self.threads = threads
        self._open()
        self.tb = float(index.time_base)
        self.key_pts = index.keyframe_pts
        self.key_times = index.keyframe_times
        self.key_dts = dict(
            zip(index.pts[index.keyframe].tolist(), index.dts[index.keyframe].tolist(), strict=True)
        )
        self._packets: Iterator[Any] | None = None
        self._ready: collections.deque[tuple[Any, float]] = collections.deque()
        self._live_key: int | None = None  # pts of the keyframe whose range the decoder follows
        self._alone: Any = None  # the keyframe packet decoded alone last (demux stands after it)
        self._cur: tuple[Any, float] | None = None  # last frame shown at or before the target
        self._next: tuple[Any, float] | None = None  # first frame after the target
        self._eof = False
        self.last_time = -np.inf  # the latest timestamp served

    def _open(self) -> None:
        """Open the file (positioned at its start) and the decoder."""
        self.file = CountingFile(self.path)
        self.container = open_container(self.path, self.file)
        self.stream = video_stream(self.container, self.path)
        self.stream.thread_type = "AUTO"
        if self.threads:
            self.stream.codec_context.thread_count = self.threads
        self.codec = self.stream.codec_context
        self._fresh = True  # nothing demuxed yet: the demuxer stands at the first packet

    def close(self) -> None:
        """Release the decoder and the file (counting its bytes into the stats)."""
        self.sync_bytes()
        self.container.close()
        self.file.close()

    def sync_bytes(self) -> None:
        """Move the bytes read so far into the stats."""
        self.stats.bytes_read += self.file.bytes_read
        self.file.bytes_read = 0

    # ---- packets and frames -------------------------------------------------------------
    def _error(self, exc: Exception) -> Exception:
        return video_error(
            self.path,
            f"decoding failed ({exc}); the file is corrupt or truncated",
            "Re-copy or re-upload the recording",
        )

    def _demux(self) -> Any:
        """The next packet of the video stream (None at the end)."""
        assert self._packets is not None
        try:
            for packet in self._packets:
                if packet.size and not getattr(packet, "is_discard", False):
                    return packet
        except self.av.error.FFmpegError as exc:
            raise self._error(exc) from exc
        return None

    def _decode(self, packet: Any) -> list[tuple[Any, float]]:
        """Frames the decoder gives back for one packet (None: drain), with their times."""
        try:
            frames = self.codec.decode(packet)
        except self.av.error.FFmpegError as exc:
            raise self._error(exc) from exc
        self.stats.frames_decoded += len(frames)
        return [(f, self._time(f)) for f in frames]

    def _time(self, frame: Any) -> float:
        if frame.pts is None:
            raise video_error(
                self.path,
                "has frames without timestamps",
                "Remux it into MP4, e.g. `ffmpeg -i IN -c copy OUT.mp4`",
            )
        return (frame.pts - self.index.start_pts) * self.tb

    def _start_demux(self, pts: int | None) -> None:
        """Demux from the keyframe at pts (a seek), or from the file's first packet (None:
        reopened, since a seek to the start of an MPEG-TS lands by decode time, past it)."""
        if pts is None:
            if not self._fresh:
                self.close()
                self._open()
                self.stats.seeks += 1
        else:
            try:
                self.container.seek(int(pts), stream=self.stream, backward=True, any_frame=False)
            except self.av.error.FFmpegError as exc:
                raise self._error(exc) from exc
            self.stats.seeks += 1
        self._fresh = False
        self._packets = self.container.demux(self.stream)

    def _reset_decoder(self) -> None:
        self.codec.flush_buffers()
        self._ready.clear()
        self._cur = self._next = None
        self._eof = False
        self._live_key = None
        self._alone = None

    def _find_key(self, pts: int) -> Any:
        """Demux (without decoding) up to the keyframe packet at pts: a seek where the index
        allows it, else forward from here (from the start when already past it)."""
        key_dts = self.key_dts[pts]
        if self.index.seekable:
            self._start_demux(pts)
        elif self._packets is None:
            self._start_demux(None)
        backoff, rewound = 1.0, False
        while True:
            packet = self._demux()
            if packet is not None and packet.pts == pts and packet.is_keyframe:
                return packet
            dts = None if packet is None else packet.dts if packet.dts is not None else packet.pts
            if dts is not None and dts <= key_dts:
                continue  # not there yet: skip the packet, undecoded
            if self.index.seekable and backoff <= MAX_SEEK_BACKOFF_S:
                # the demuxer landed after the keyframe (some seek by decode time): step back
                self._start_demux(pts - int(backoff / self.tb))
                backoff *= 4
            elif not rewound:
                self._start_demux(None)
                rewound = True
            else:
                raise video_error(
                    self.path,
                    "its index lists a keyframe the stream does not hold",
                    "Remux it, e.g. `ffmpeg -i IN -c copy OUT.mp4`",
                )

    # ---- the frame rule -----------------------------------------------------------------
    def _keyframe_for(self, t: float) -> tuple[int, bool]:
        """(pts of the keyframe at or before t, whether t is that keyframe's own time)."""
        j = int(np.searchsorted(self.key_times, t + TIME_EPS, side="right")) - 1
        j = max(j, 0)
        return int(self.key_pts[j]), bool(abs(self.key_times[j] - t) <= TIME_EPS)

    def _advance(self, t: float) -> None:
        """Decode forward until the next frame is after t (or the stream ends)."""
        while True:
            if self._next is None:
                if not self._ready:
                    if self._eof:
                        return
                    packet = self._demux()
                    if packet is None:
                        self._eof = True
                        self._ready.extend(self._decode(None))
                        continue
                    self._ready.extend(self._decode(packet))
                    continue
                self._next = self._ready.popleft()
            if self._next[1] <= t + TIME_EPS:
                self._cur, self._next = self._next, None
            else:
                return

    def _decode_alone(self, packet: Any, pts: int) -> tuple[Any, float]:
        """The keyframe of `packet`, decoded alone and drained at once."""
        frames = self._decode(packet) + self._decode(None)
        self.codec.flush_buffers()
        self._alone, self._live_key = packet, None
        self._ready.clear()
        self._eof = False
        self.stats.keyframes_alone += 1
        for frame, time in frames:
            if frame.pts == pts:
                return frame, time
        if not frames:
            raise video_error(self.path, "has a keyframe that does not decode", "Re-encode it")
        return frames[0]

    def _go_live(self, key_pts: int) -> None:
        """Start decoding forward from the keyframe at key_pts."""
        if self._alone is not None and self._alone.pts == key_pts:
            packet = self._alone  # the demuxer stands right after it
        else:
            packet = self._find_key(key_pts)
        self._reset_decoder()
        self._live_key = key_pts
        self._ready.extend(self._decode(packet))

    def frame_at(self, t: float) -> tuple[Any, int]:
        """The frame shown at time t (the frame rule of `biovl_core.video.sampler`), and its pts."""
        key_pts, alone = self._keyframe_for(t)
        behind = self._cur is not None and t + TIME_EPS < self._cur[1]
        if alone and not (self._live_key == key_pts and not behind):
            if self._cur is not None and self._cur[0].pts == key_pts:
                return self._cur[0], key_pts
            packet = self._find_key(key_pts)
            self._reset_decoder()
            frame, time = self._decode_alone(packet, key_pts)
            self._cur, self._next = (frame, time), None
            self.last_time = t
            return frame, frame.pts
        if self._live_key is None or self._live_key != key_pts or behind:
            self._go_live(key_pts)
        self._advance(t)
        chosen = self._cur or self._next
        if chosen is None:
            raise video_error(
                self.path, "has no decodable frames", "Re-copy or re-upload the recording"
            )
        self.last_time = t
        return chosen[0], chosen[0].pts
