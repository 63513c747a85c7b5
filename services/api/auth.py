"""Bearer-token auth per lab. Tokens are stored only as sha256 hex digests.

Sources (merged): a tokens file (JSON or YAML mapping ``lab: sha256(token)``) and, for
development, ``BIOVL_LAB_TOKENS="lab1:token1,lab2:token2"`` (plain tokens, hashed on load).
``python -m services tokens add LAB`` creates a token and stores its hash in the tokens file.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from services.archive import check_lab
from services.settings import read_mapping_file


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
    """Maps a presented token to its lab."""

    def __init__(self, digests: dict[str, str]) -> None:
        self._by_digest = {d: lab for lab, d in digests.items()}

    @classmethod
    def from_settings(cls, tokens_file: str | None, lab_tokens: str | None) -> TokenStore:
        """Merge the tokens file and the dev tokens string."""
        digests = load_tokens_file(tokens_file) if tokens_file else {}
        digests.update(parse_dev_tokens(lab_tokens))
        return cls(digests)

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def labs(self) -> frozenset[str]:
        """The labs that hold a token (a signed link of any other lab is refused)."""
        return frozenset(self._by_digest.values())

    def lab_for(self, token: str | None) -> str:
        """The lab owning ``token``; AuthError when missing or unknown."""
        if not token:
            raise AuthError("missing token: send 'Authorization: Bearer <lab token>'")
        digest = hash_token(token)
        for known, lab in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return lab
        raise AuthError("invalid token: it matches no lab; ask the operator for your lab's token")


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
