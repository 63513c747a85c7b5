"""Packing wheels into carry folders of <= 55 MiB: split parts, sha256 and the manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from .config import FOLDER_LIMIT, MANIFEST, MIB, PART_SIZE


def part_names(wheel: str, size: int, part_size: int = PART_SIZE) -> list[tuple[str, int]]:
    """The parts of a wheel as `split -b` names them: [(wheel.part-aa, size), ...]."""
    if size <= 0:
        raise ValueError(f"{wheel}: empty file")
    count = -(-size // part_size)
    if count > 26 * 26:
        raise ValueError(f"{wheel}: too many parts")
    out = []
    for i in range(count):
        suffix = chr(ord("a") + i // 26) + chr(ord("a") + i % 26)
        out.append((f"{wheel}.part-{suffix}", min(part_size, size - i * part_size)))
    return out


def pack(
    sizes: dict[str, int], limit: int = FOLDER_LIMIT, part_size: int = PART_SIZE
) -> list[list[tuple[str, int]]]:
    """First-fit decreasing of the wheels into folders of at most `limit` bytes.

    A wheel larger than `limit` is split into `part_size` parts (the last one smaller), and no
    folder holds two parts of one wheel. Returns the folders as lists of (file, size).
    """
    if part_size > limit:
        raise ValueError("part_size must not exceed limit")
    items: list[tuple[str, int, str]] = []  # (file, size, wheel it belongs to)
    for wheel, size in sizes.items():
        if size > limit:
            items += [(p, s, wheel) for p, s in part_names(wheel, size, part_size)]
        else:
            items.append((wheel, size, wheel))
    items.sort(key=lambda it: (-it[1], it[0]))
    folders: list[list[tuple[str, int]]] = []
    used: list[int] = []
    owners: list[set[str]] = []
    for name, size, wheel in items:
        for i, folder in enumerate(folders):
            if used[i] + size <= limit and wheel not in owners[i]:
                folder.append((name, size))
                used[i] += size
                owners[i].add(wheel)
                break
        else:
            folders.append([(name, size)])
            used.append(size)
            owners.append({wheel})
    return folders


def sha256_of(paths: Iterable[Path]) -> str:
    """sha256 of the concatenation of `paths`."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(MIB):
                digest.update(chunk)
    return digest.hexdigest()


def write_parts(src: Path, parts: list[tuple[Path, int]]) -> None:
    """Cut `src` into the given (destination, size) pieces, in order."""
    with open(src, "rb") as fh:
        for dest, size in parts:
            with open(dest, "wb") as out:
                left = size
                while left:
                    chunk = fh.read(min(MIB, left))
                    if not chunk:
                        raise ValueError(f"{src}: shorter than its parts")
                    out.write(chunk)
                    left -= len(chunk)
        if fh.read(1):
            raise ValueError(f"{src}: longer than its parts")


def make_manifest(
    folders: list[list[tuple[str, int]]],
    wheels: dict[str, dict],
    extra: dict | None = None,
    limit: int = FOLDER_LIMIT,
    part_size: int = PART_SIZE,
) -> dict:
    """The manifest: folders c1..cN with their files, and each wheel with its sha256 and parts.

    `wheels` maps a wheel's file name to at least {"size", "sha256"} (name/version optional).
    """
    where: dict[str, str] = {}
    out_folders = []
    for i, files in enumerate(folders, 1):
        name = f"c{i}"
        out_folders.append(
            {
                "name": name,
                "bytes": sum(s for _, s in files),
                "files": [{"file": f, "size": s} for f, s in files],
            }
        )
        for f, _ in files:
            where[f] = name
    out_wheels = []
    for wheel in sorted(wheels):
        info = dict(wheels[wheel])
        entry = {"file": wheel, **info}
        if wheel in where:
            entry["folder"] = where[wheel]
            entry["parts"] = []
        else:
            parts = part_names(wheel, info["size"], part_size)
            entry["folder"] = None
            entry["parts"] = [{"file": p, "size": s, "folder": where[p]} for p, s in parts]
        out_wheels.append(entry)
    manifest = {
        "format": 1,
        "folder_limit": limit,
        "part_size": part_size,
        "folders": out_folders,
        "wheels": out_wheels,
        "total_bytes": sum(w["size"] for w in out_wheels),
    }
    manifest.update(extra or {})
    return manifest


def load_manifest(kit: Path) -> dict:
    path = kit / MANIFEST
    if not path.is_file():
        raise SystemExit(f"{path} is missing (carry it with every folder)")
    return json.loads(path.read_text())
