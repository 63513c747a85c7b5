"""The loadtests/run.py scenario for Locust, against a running service on 127.0.0.1.

    BIOVL_LOAD_TOKENS=lab1:TOKEN1,lab2:TOKEN2 locust -f loadtests/locustfile.py \
        --host http://127.0.0.1:8000 --headless -u 4 -r 2 -t 120s

Each simulated lab submits a generated recording (a new seed each time, so no deduplication)
and polls it until it finishes; Locust reports request latencies, and the custom
"job end to end" entry the submit-to-result time. Locust is not a project dependency:
``pip install locust`` to use this file (run.py needs nothing extra).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from locust import HttpUser, between, events, task

_SEEDS = itertools.count()
_TOKENS = [
    t.split(":", 1)[1] for t in os.environ.get("BIOVL_LOAD_TOKENS", "").split(",") if ":" in t
]
_DIR = Path(tempfile.mkdtemp(prefix="biovl-locust-"))


@events.test_start.add_listener
def _check_target(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Refuse anything but a local target, and runs without tokens."""
    host = urlparse(environment.host or "").hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {host!r}: only 127.0.0.1 / localhost")
    if not _TOKENS:
        raise SystemExit("set BIOVL_LOAD_TOKENS=lab:token,...")


def _recording(seed: int) -> dict[str, tuple[str, bytes, str]]:
    """A generated 40 s recording as multipart files."""
    from biovl_core.synthetic import make_recording

    rec = make_recording(_DIR / f"rec{seed}", "pcr", seed=seed, duration_s=40, size=(160, 120))
    return {
        "video": ("video.mp4", (rec / "video.mp4").read_bytes(), "video/mp4"),
        "protocol": ("protocol.txt", (rec / "protocol.txt").read_bytes(), "text/plain"),
    }


class Lab(HttpUser):
    """A lab submitting recordings and polling for their alignments."""

    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        """Pick this lab's token."""
        self.headers = {"Authorization": f"Bearer {_TOKENS[id(self) % len(_TOKENS)]}"}

    @task
    def submit_and_wait(self) -> None:
        """POST a recording, poll until it finishes, report the end-to-end time."""
        files = _recording(next(_SEEDS))
        start = time.monotonic()
        r = self.client.post("/v1/jobs", files=files, headers=self.headers)
        if r.status_code != 202:
            return
        url = r.json()["urls"]["self"]
        deadline = start + 600
        while time.monotonic() < deadline:
            body = self.client.get(url, headers=self.headers, name="/v1/jobs/{id}").json()
            if body["status"] in ("succeeded", "dead"):
                events.request.fire(
                    request_type="JOB",
                    name="job end to end",
                    response_time=(time.monotonic() - start) * 1000,
                    response_length=0,
                    exception=None
                    if body["status"] == "succeeded"
                    else RuntimeError(body["error"]),
                    context={},
                )
                return
            time.sleep(0.5)
