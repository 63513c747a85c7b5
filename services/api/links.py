"""Signed media links: short-lived, job-scoped URLs for what a browser fetches without headers
(``<video src>``, ``<track src>``, download links), so the lab token never travels in a URL.

A link is ``/v1/jobs/<id>/<resource>?lab=<lab>&exp=<unix seconds>&sig=<hex>`` where ``sig`` is
HMAC-SHA256 over (lab, job id, resource, expiry) with the service's link secret. The secret is
``link_secret`` from the settings, or else generated once and kept in
``<archive>/secrets/link-secret`` (mode 0600), so every replica sharing the archive signs alike.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlencode

from biovl_core.files import fsync_dir
from services.settings import ServiceSettings

log = logging.getLogger("biovl.service")

SECRET_FILE = Path("secrets") / "link-secret"
MIN_SECRET_CHARS = 32
# resource -> the key the API uses for it in a job's ``links``
RESOURCES = {
    "video": "video",
    "alignment.json": "json",
    "alignment.csv": "csv",
    "alignment.vtt": "vtt",
}
SIGNATURE_PARAMS = ("lab", "exp", "sig")


class LinkError(Exception):
    """A signed link that is expired, tampered with, or made for another job or resource (403)."""


def _read_secret(path: Path) -> bytes:
    """The secret stored in ``path``; ValueError naming the file when it is too short."""
    text = path.read_text(encoding="utf-8").strip()
    if len(text) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{path}: the link secret is shorter than {MIN_SECRET_CHARS} characters; "
            "delete the file to have the service generate a new one"
        )
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users: chmod 600 it", path)
    return text.encode("utf-8")


def archive_secret(archive_root: Path) -> bytes:
    """The link secret kept under the archive, created (mode 0600) by the first replica to ask.

    The new secret is written to a private temp file and published with ``os.link``, which fails
    when a sibling replica published first; then that replica's secret is used.
    """
    path = archive_root / SECRET_FILE
    if path.exists():
        return _read_secret(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return _read_secret(path)


class LinkSigner:
    """Makes and checks the signed links of a lab's job."""

    def __init__(self, secret: bytes, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError(f"link_ttl_s must be a positive number of seconds, not {ttl_s}")
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> LinkSigner:
        """The signer of ``settings.link_secret``, or of the archive's secret file when unset."""
        if settings.link_secret is not None:
            if len(settings.link_secret) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"link_secret (BIOVL_LINK_SECRET) must be at least {MIN_SECRET_CHARS} "
                    "characters; generate one with `python -c 'import secrets; "
                    "print(secrets.token_hex(32))'` or leave it unset"
                )
            secret = settings.link_secret.encode("utf-8")
        else:
            secret = archive_secret(settings.archive_path)
        return cls(secret, settings.link_ttl_s)

    def signature(self, lab: str, job_id: str, resource: str, expires: int) -> str:
        """HMAC-SHA256 hex of (lab, job id, resource, expiry)."""
        message = "\n".join((lab, job_id, resource, str(expires))).encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def links(self, lab: str, job_id: str) -> dict[str, str | int]:
        """``{"expires_at": unix seconds, "video": url, "json": url, "csv": url, "vtt": url}``."""
        expires = int(self._clock()) + self.ttl_s
        out: dict[str, str | int] = {"expires_at": expires}
        for resource, key in RESOURCES.items():
            query = urlencode(
                {
                    "lab": lab,
                    "exp": expires,
                    "sig": self.signature(lab, job_id, resource, expires),
                }
            )
            out[key] = f"/v1/jobs/{job_id}/{resource}?{query}"
        return out

    def verify(self, query: Mapping[str, str], job_id: str, resource: str) -> str:
        """The lab a signed link was made for; LinkError when it does not hold for this
        job and resource, or has expired."""
        fix = f"get fresh links from GET /v1/jobs/{job_id} ('links') with your bearer token"
        missing = [p for p in SIGNATURE_PARAMS if not query.get(p)]
        if missing:
            raise LinkError(f"incomplete signed link: {', '.join(missing)} missing; {fix}")
        lab, sig = query["lab"], query["sig"]
        try:
            expires = int(query["exp"])
        except ValueError:
            raise LinkError(f"invalid signed link: exp is not a number; {fix}") from None
        want = self.signature(lab, job_id, resource, expires)
        # bytes, not str: compare_digest refuses a non-ASCII str (a ``sig=%C3%A9`` would be a 500)
        if not hmac.compare_digest(want.encode("ascii"), sig.lower().encode("utf-8")):
            raise LinkError(
                f"invalid link signature: the link was altered or made for another job or "
                f"file; {fix}"
            )
        if expires < self._clock():
            raise LinkError(f"the signed link expired at {expires} (unix time); {fix}")
        return lab
