"""Slots for requests that hold a body open (uploads, tus PATCHes, previews, corrections): a cap
per ingress replica and a smaller one per lab, so one lab's slow or stalled clients can never take
every slot and give another lab a 503. Non-blocking: a request finds a slot or is refused."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from services.api.errors import HTTPProblem


class LabSlots:
    """``total`` slots on this replica, at most ``per_lab`` of them held by one lab."""

    def __init__(
        self,
        kind: str,
        total: int,
        per_lab: int,
        retry_after_s: int,
        setting_names: tuple[str, str],
        on_change: Callable[[str, int], None] | None = None,
    ) -> None:
        if total < 1 or per_lab < 1:
            raise ValueError(f"{kind} slots: total and per-lab caps must be >= 1")
        self.kind = kind
        self.total = total
        self.per_lab = min(per_lab, total)
        self.retry_after_s = retry_after_s
        self.setting_names = setting_names  # (total, per lab): named in the refusals
        self._on_change = on_change
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def in_use(self, lab: str | None = None) -> int:
        """Slots held now (by ``lab``, or by everyone)."""
        with self._lock:
            return self._held.get(lab, 0) if lab else sum(self._held.values())

    def _refuse(self, message: str) -> HTTPProblem:
        return HTTPProblem(
            503,
            f"{message}; retry in {self.retry_after_s} s",
            {"Retry-After": str(self.retry_after_s)},
        )

    def acquire(self, lab: str) -> None:
        """Take one slot for ``lab`` or raise the 503 (with Retry-After) saying which cap is full."""
        with self._lock:
            mine = self._held.get(lab, 0)
            if sum(self._held.values()) >= self.total:
                raise self._refuse(
                    f"{self.total} {self.kind} are already in progress on this server "
                    f"({self.setting_names[0]})"
                )
            if mine >= self.per_lab:
                raise self._refuse(
                    f"your lab already has {mine} {self.kind} in progress on this server (the "
                    f"limit per lab is {self.per_lab}, {self.setting_names[1]}); let one finish"
                )
            self._held[lab] = mine + 1
            count = mine + 1
        if self._on_change:
            self._on_change(lab, count)

    def release(self, lab: str) -> None:
        """Give one of ``lab``'s slots back."""
        with self._lock:
            count = self._held.get(lab, 0) - 1
            if count > 0:
                self._held[lab] = count
            else:
                self._held.pop(lab, None)
                count = 0
        if self._on_change:
            self._on_change(lab, count)

    @contextmanager
    def hold(self, lab: str) -> Iterator[None]:
        """One slot for the block (503 when none is free)."""
        self.acquire(lab)
        try:
            yield
        finally:
            self.release(lab)
