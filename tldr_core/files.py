"""Writing files so that a crash leaves the old file or the new one, never half of one; and checking the
files a folder of weights ships with against its manifest.

Everything the app and its tools write (audio, settings, voices, corpus manifests, checkpoints, models) goes
through `atomic_path`: the data is written to a temporary file beside the target and renamed over it, and a write
the disk refuses (a read-only folder, a full disk) is a SaveError that says so. A model or codec folder carries
manifest.json with the sha256 of each file (`file_entries`); `verified_manifest` reports a missing or damaged file
by name before any library reads it (a flipped byte in an ONNX graph's weights would otherwise load and speak
garbage).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tldr_core.errors import ModelError, SaveError

MANIFEST = "manifest.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cannot_save(path: Path, reason: object) -> SaveError:
    """The SaveError for `path`; like an OSError's, its strerror is the reason alone (for a message of its own)."""
    error = SaveError(f"'{path}' could not be saved ({reason}); nothing was half-written. Make room on the disk or "
                      f"choose a folder that can be written to, then try again.")
    error.strerror = str(reason)
    return error


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that go by extension work) and move it
    into place when the block succeeds; on any exception the temporary file is removed and `path` untouched, and
    an OSError (the folder cannot be written, the disk is full) becomes a SaveError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    except OSError as error:
        raise _cannot_save(path, error.strerror or error) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except OSError as error:
        raise _cannot_save(path, error.strerror or error) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """UTF-8 text, flushed to disk before it replaces `path` (settings and manifests must survive power loss)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path, names: list[str]) -> dict[str, dict]:
    """What a manifest records of each file: {name: {sha256, bytes}}."""
    return {name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size} for name in names}


def verified_manifest(folder: Path, what: str, restore: str) -> dict:
    """A folder's manifest.json once every file it lists matches its sha256; otherwise a ModelError naming the
    missing or damaged file and ending with `restore`: what to do about it."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"No TLDR Voice {what} in '{folder}' (manifest.json is missing). {restore}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ModelError(f"The {what} manifest '{manifest_path}' is damaged. {restore}") from None
    for name, sha256 in files.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"The {what} file '{path}' is missing. {restore}")
        if file_sha256(path) != sha256:
            raise ModelError(f"The {what} file '{path}' is damaged (its sha256 does not match the manifest). {restore}")
    return manifest
