"""Bearer-token auth per lab. Tokens are stored only as sha256 hex digests.

Sources (merged): a tokens file (JSON or YAML mapping ``lab: sha256(token)``) and, for
development, ``BIOVL_LAB_TOKENS="lab1:token1,lab2:token2"`` (plain tokens, hashed on load).
The tokens file is read again whenever it changes (its inode, size or mtime: a k8s Secret
update swaps a symlink), so a revoked token stops working on the next request; a file that
cannot be read or parsed keeps the tokens last loaded and logs why.
``python -m services tokens add LAB`` creates a token and stores its hash in the tokens file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
from pathlib import Path

from services.archive import check_lab
from services.settings import read_mapping_file

log = logging.getLogger("biovl.auth")


class AuthError(Exception):
    """The request carries no valid token (-> HTTP 401)."""


def hash_token(token: str) -> str:
    """sha256 hex digest of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_tokens_file(path: str | Path) -> dict[str, str]:
    """``{lab: sha256}`` from a JSON or YAML file (a missing file is an empty mapping)."""
    p = Path(path)
    if not p.exists():
        return {}
    data = read_mapping_file(p, "lab -> sha256(token)")
    out: dict[str, str] = {}
    for lab, digest in data.items():
        digest = str(digest).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{p}: the entry for lab {lab!r} is not a sha256 hex digest")
        out[check_lab(str(lab))] = digest
    return out


def parse_dev_tokens(spec: str | None) -> dict[str, str]:
    """``{lab: sha256}`` from ``"lab1:token1,lab2:token2"``."""
    out: dict[str, str] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        lab, sep, token = item.partition(":")
        if not sep or not token:
            raise ValueError(f"BIOVL_LAB_TOKENS entry {item!r} is not 'lab:token'")
        out[check_lab(lab.strip())] = hash_token(token.strip())
    return out


class TokenStore:
    """Maps a presented token to its lab; follows the tokens file as it changes."""

    def __init__(
        self,
        digests: dict[str, str],
        tokens_file: str | Path | None = None,
        dev_digests: dict[str, str] | None = None,
    ) -> None:
        self._by_digest = {d: lab for lab, d in digests.items()}
        self._file = Path(tokens_file) if tokens_file else None
        self._dev = dict(dev_digests or {})
        self._stamp = _file_stamp(self._file)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, tokens_file: str | None, lab_tokens: str | None) -> TokenStore:
        """Merge the tokens file and the dev tokens string."""
        dev = parse_dev_tokens(lab_tokens)
        digests = load_tokens_file(tokens_file) if tokens_file else {}
        digests.update(dev)
        return cls(digests, tokens_file, dev)

    def _refresh(self) -> None:
        """Reload the tokens file when its stamp changed (one stat per request)."""
        if self._file is None:
            return
        stamp = _file_stamp(self._file)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                digests = load_tokens_file(self._file)
            except (OSError, ValueError) as exc:
                log.error(
                    "%s: not reloaded, keeping the tokens loaded before (%s)", self._file, exc
                )
                self._stamp = stamp
                return
            digests.update(self._dev)
            self._by_digest = {d: lab for lab, d in digests.items()}
            self._stamp = stamp
            log.info("%s changed: %d lab token(s) loaded", self._file, len(self._by_digest))

    def __len__(self) -> int:
        self._refresh()
        return len(self._by_digest)

    @property
    def labs(self) -> frozenset[str]:
        """The labs that hold a token (a signed link of any other lab is refused)."""
        self._refresh()
        return frozenset(self._by_digest.values())

    def lab_for(self, token: str | None) -> str:
        """The lab owning ``token``; AuthError when missing or unknown."""
        if not token:
            raise AuthError("missing token: send 'Authorization: Bearer <lab token>'")
        self._refresh()
        digest = hash_token(token)
        for known, lab in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return lab
        raise AuthError("invalid token: it matches no lab; ask the operator for your lab's token")


def _file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of the file ``path`` resolves to, None when absent."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def add_token(tokens_file: str | Path, lab: str) -> str:
    """Create a new random token for ``lab``, store its hash in ``tokens_file``, return the token."""
    p = Path(tokens_file)
    digests = load_tokens_file(p)
    token = secrets.token_urlsafe(32)
    digests[check_lab(lab)] = hash_token(token)
    from services.archive import write_json_atomic

    write_json_atomic(p, digests)
    return token
