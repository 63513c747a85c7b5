"""The MP4/MOV sample table FFmpeg's index leaves out: each sample's composition offset (``ctts``).

FFmpeg reads every sample table of the ``moov`` box when it opens an MP4 and PyAV exposes the
result as ``stream.index_entries`` (byte position, size, keyframe flag from ``stss``/``stco``/
``stsz``/``stsc``, decode time from ``stts``). Presentation times need one more table, ``ctts``
(pts - dts per sample, run-length coded), which the index does not carry. This module reads
just that: top-level box headers until ``moov``, then ``moov`` itself (a few MB even for hours
of video), walked in memory; the table is decoded with numpy, no per-entry Python.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAX_MOOV_BYTES = 512 * 1024 * 1024
"""A moov box larger than this is not read (no real recording has one)."""


@dataclass(frozen=True)
class TrackTables:
    """What this module reads of one track: its sample count and composition offsets."""

    sample_count: int
    composition_offsets: np.ndarray  # int64 [sample_count], stream time base; zeros without ctts
    fragmented: bool  # the file has movie fragments (moof): the tables list only some samples
    bytes_read: int


def _boxes(buf: memoryview, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of each box in buf[start:end]."""
    end = len(buf) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _child(buf: memoryview, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(payload start, end) of the first child box of `kind`."""
    for k, a, b in _boxes(buf, start, end):
        if k == kind:
            return a, b
    return None


def _read_moov(fh: BinaryIO, file_size: int) -> tuple[bytes | None, bool, int]:
    """(moov payload or None, whether a moof box was seen, bytes read), walking top-level headers."""
    pos, read, moov, fragmented = 0, 0, None, False
    while pos + 8 <= file_size:
        fh.seek(pos)
        head = fh.read(16)
        read += len(head)
        if len(head) < 8:
            break
        size, kind = struct.unpack_from(">I4s", head, 0)
        header = 8
        if size == 1 and len(head) == 16:
            (size,) = struct.unpack_from(">Q", head, 8)
            header = 16
        elif size == 0:
            size = file_size - pos
        if size < header:
            break
        if kind == b"moov" and size - header <= MAX_MOOV_BYTES:
            fh.seek(pos + header)
            moov = fh.read(size - header)
            read += len(moov)
        elif kind == b"moof":
            fragmented = True
            break
        pos += size
    return moov, fragmented, read


def _track_id(buf: memoryview, a: int, b: int) -> int | None:
    """The track_ID of a trak's tkhd box."""
    tkhd = _child(buf, a, b, b"tkhd")
    if tkhd is None:
        return None
    version = buf[tkhd[0]]
    offset = tkhd[0] + (20 if version == 1 else 12)
    return struct.unpack_from(">I", buf, offset)[0]


def read_track_tables(path: str | Path, track_id: int) -> TrackTables | None:
    """Sample count and per-sample composition offsets of track `track_id` (PyAV's
    ``stream.id`` for MP4/MOV), or None when the file has no such track or no readable moov."""
    p = Path(path)
    with open(p, "rb") as fh:
        moov, fragmented, read = _read_moov(fh, p.stat().st_size)
    if moov is None:
        return None
    buf = memoryview(moov)
    fragmented = fragmented or _child(buf, 0, len(buf), b"mvex") is not None
    for kind, a, b in _boxes(buf):
        if kind != b"trak" or _track_id(buf, a, b) != track_id:
            continue
        mdia = _child(buf, a, b, b"mdia")
        minf = _child(buf, *mdia, b"minf") if mdia else None
        stbl = _child(buf, *minf, b"stbl") if minf else None
        if stbl is None:
            return None
        stsz = _child(buf, *stbl, b"stsz") or _child(buf, *stbl, b"stz2")
        if stsz is None:
            return None
        count = struct.unpack_from(">I", buf, stsz[0] + 8)[0]
        offsets = np.zeros(count, dtype=np.int64)
        ctts = _child(buf, *stbl, b"ctts")
        if ctts is not None:
            entries = struct.unpack_from(">I", buf, ctts[0] + 4)[0]
            table = np.frombuffer(buf, dtype=">i4", count=2 * entries, offset=ctts[0] + 8)
            runs = table[0::2].astype(np.int64)
            if runs.sum() != count or np.any(runs < 0):
                return None
            offsets = np.repeat(table[1::2].astype(np.int64), runs)
        return TrackTables(count, offsets, fragmented, read)
    return None
