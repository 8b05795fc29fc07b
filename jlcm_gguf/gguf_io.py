"""Reading and writing GGUF files through gguf-py."""
from __future__ import annotations

from pathlib import Path


class GGUFFormatError(ValueError):
    pass


def open_reader(path: Path):
    """A GGUFReader for path, with a one-line error for a file that is not a readable GGUF."""
    from gguf import GGUFReader

    try:
        return GGUFReader(path, "r")
    except (ValueError, OSError, KeyError) as e:
        raise GGUFFormatError(f"{path}: not a readable GGUF file ({e})") from e
