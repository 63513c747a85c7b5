"""Where resumable (tus) uploads wait: ``<archive>/uploads/<lab>/<id>.{bin,json,lock}``, each lab
in its own folder, written at an offset under an exclusive file lock, hashed as the bytes arrive,
and removed when they expire.

The sha256 of an upload is computed while its bytes stream in (``Writer``), so a finished upload
names its hash and nothing reads the file again to hash it. The hash state lives in the process
that received the bytes; a PATCH that lands on another ingress replica first hashes the part it
has not seen (each replica reads each byte at most once), so the digest is right whichever
replica gets which PATCH. Uploads sit under the archive root, on the archive's filesystem: a
finished upload becomes a job's video by a hard link, never a copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.archive import check_lab, write_json_atomic

UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
HASH_READ_BYTES = 4 * 1024 * 1024
MAX_HASH_STATES = 1024  # uploads whose running digest one process keeps


class UploadBusy(Exception):
    """Another request holds the upload's lock (a PATCH still writing, or a DELETE)."""


@dataclass
class UploadInfo:
    """One upload's record (``<id>.json``)."""

    id: str
    lab: str
    length: int
    offset: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float = 0.0
    sha256: str | None = None  # set when the last byte arrived
    interrupted: bool = False  # the last PATCH ended before its body did

    @property
    def complete(self) -> bool:
        """True when every byte has arrived."""
        return self.offset >= self.length


def check_upload_id(value: str) -> str:
    """``value`` if it is an upload id (32 lower-case hex digits), else ValueError."""
    if not isinstance(value, str) or not UPLOAD_ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an upload id (32 lower-case hex digits)")
    return value


class Writer:
    """Appends one PATCH's bytes at the upload's offset and feeds them to its running digest."""

    def __init__(self, path: Path, offset: int, digest: Any) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, offset)  # drop a tail a killed request wrote but never committed
        self.offset = offset
        self.digest = digest

    def write(self, data: bytes) -> None:
        """Write ``data`` at the offset (blocking: call it in a worker thread)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.offset)
            self.digest.update(view[:n])
            self.offset += n
            view = view[n:]

    def close(self) -> None:
        """fsync and close: what the offset says is on disk once this returns."""
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


class UploadStore:
    """The uploads of every lab under ``root``; ids are random, lookups are per lab."""

    def __init__(self, root: Path, expiry_s: float, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.expiry_s = expiry_s
        self._clock = clock
        self.root.mkdir(parents=True, exist_ok=True)
        self._digests: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._digest_lock = threading.Lock()
        self._last_sweep = 0.0

    # ---- paths ---------------------------------------------------------------------------
    def _folder(self, lab: str) -> Path:
        return self.root / check_lab(lab)

    def data_path(self, lab: str, upload_id: str) -> Path:
        """The upload's bytes."""
        return self._folder(lab) / f"{check_upload_id(upload_id)}.bin"

    def _info_path(self, lab: str, upload_id: str) -> Path:
        return self._folder(lab) / f"{check_upload_id(upload_id)}.json"

    def _lock_path(self, lab: str, upload_id: str) -> Path:
        return self._folder(lab) / f"{check_upload_id(upload_id)}.lock"

    # ---- records -------------------------------------------------------------------------
    def create(self, lab: str, length: int, metadata: dict[str, str]) -> UploadInfo:
        """A new empty upload of ``length`` bytes for ``lab``."""
        now = self._clock()
        info = UploadInfo(
            id=uuid.uuid4().hex,
            lab=lab,
            length=length,
            metadata=metadata,
            created_at=now,
            updated_at=now,
            expires_at=now + self.expiry_s,
        )
        self._folder(lab).mkdir(parents=True, exist_ok=True)
        self.data_path(lab, info.id).touch(mode=0o600)
        self.save(info)
        return info

    def save(self, info: UploadInfo) -> None:
        """Write the record atomically."""
        write_json_atomic(self._info_path(info.lab, info.id), asdict(info))

    def get(self, lab: str, upload_id: str) -> UploadInfo | None:
        """``lab``'s upload, or None when it does not exist, is another lab's, or has expired
        (an expired one is removed here)."""
        try:
            path = self._info_path(lab, upload_id)
            info = UploadInfo(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, OSError, TypeError):
            return None
        if info.lab != lab:
            return None
        if info.expires_at < self._clock():
            self.remove(lab, upload_id)
            return None
        return info

    def open_count(self, lab: str) -> int:
        """Uploads ``lab`` holds now (finished or not)."""
        folder = self._folder(lab)
        return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0

    def remove(self, lab: str, upload_id: str) -> None:
        """Delete the upload's files (a job made from it keeps its own link to the bytes)."""
        for path in (
            self._info_path(lab, upload_id),
            self.data_path(lab, upload_id),
            self._lock_path(lab, upload_id),
        ):
            path.unlink(missing_ok=True)
        with self._digest_lock:
            self._digests.pop(upload_id, None)

    def sweep(self, min_interval_s: float = 0.0) -> int:
        """Remove every expired upload (at most once per ``min_interval_s``); returns how many.
        An upload whose record is gone (a crash between files) goes once it is old enough."""
        now = self._clock()
        if now - self._last_sweep < min_interval_s:
            return 0
        self._last_sweep = now
        removed = 0
        for folder in [p for p in self.root.iterdir() if p.is_dir()]:
            for path in folder.iterdir():
                upload_id, suffix = path.stem, path.suffix
                if not UPLOAD_ID_RE.fullmatch(upload_id):
                    continue
                try:
                    if suffix == ".json":
                        info = json.loads(path.read_text(encoding="utf-8"))
                        expired = float(info.get("expires_at", 0)) < now
                    else:
                        expired = not path.with_suffix(".json").exists() and (
                            path.stat().st_mtime < now - self.expiry_s
                        )
                except (OSError, ValueError):
                    continue
                if expired:
                    self.remove(folder.name, upload_id)
                    removed += 1
        return removed

    # ---- writing -------------------------------------------------------------------------
    @contextmanager
    def locked(self, lab: str, upload_id: str) -> Iterator[None]:
        """The upload's exclusive lock (across processes and replicas); UploadBusy when held."""
        fd = os.open(self._lock_path(lab, upload_id), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadBusy(upload_id) from None
            yield
        finally:
            os.close(fd)

    def writer(self, info: UploadInfo) -> Writer:
        """A writer at the upload's offset, with the digest of every byte before it (caught up
        from the file when this process has not seen them). Blocking: call it in a thread."""
        path = self.data_path(info.lab, info.id)
        with self._digest_lock:
            offset, digest = self._digests.pop(info.id, (0, None))
        if digest is None or offset > info.offset:
            offset, digest = 0, hashlib.sha256()
        if offset < info.offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                while offset < info.offset:
                    block = fh.read(min(HASH_READ_BYTES, info.offset - offset))
                    if not block:
                        raise OSError(f"upload {info.id}: file shorter than its offset")
                    digest.update(block)
                    offset += len(block)
        return Writer(path, info.offset, digest)

    def commit(self, info: UploadInfo, writer: Writer, *, interrupted: bool) -> UploadInfo:
        """Close the writer and record its new offset (and the sha256 once complete)."""
        writer.close()
        now = self._clock()
        info.offset = writer.offset
        info.updated_at = now
        info.expires_at = now + self.expiry_s
        info.interrupted = interrupted
        if info.complete:
            info.sha256 = writer.digest.hexdigest()
        else:
            with self._digest_lock:
                self._digests[info.id] = (writer.offset, writer.digest)
                while len(self._digests) > MAX_HASH_STATES:
                    self._digests.popitem(last=False)
        self.save(info)
        return info
