"""Fingerprints of the model files a job names, so a resumed run notices when they changed.

The score and select hashes cover the job's config, not the files it points at. A classifier
retrained in place keeps its path and config, so without this its old scores would be reused.
`model_fingerprints(section)` finds every model reference in a scorer list or selector config
(keys `model`, `classifier_model`, `tokenizer`) and fingerprints the files it resolves to: per
file its relative name, size and the SHA-256 of its first and last MiB. That is cheap for
multi-GB weights and, unlike modification times, the same on every copy of the files.

Special names (`smollm2`, `minilm`) and `package:` references are versioned by the package that
ships them and are recorded as they are (resolving `smollm2` would export it). A reference that
does not resolve is recorded as missing; scoring then fails with the loader's error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from thresher.models.loading import SPECIAL_REFS, ModelError, resolve_model_ref

MODEL_KEYS = ("model", "classifier_model", "tokenizer")
_EDGE = 1 << 20  # bytes hashed from each end of a file


def model_refs(section: Any) -> list[str]:
    """Every string under a model key anywhere in ``section`` (dicts and lists), sorted, unique."""
    found: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key in MODEL_KEYS and isinstance(value, str):
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(section)
    return sorted(found)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for folder, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
    return out


def path_fingerprint(path: Path) -> str:
    """SHA-256 over each file's relative name, size, first and last MiB (a folder: all its files)."""
    h = hashlib.sha256()
    for f in _files(path):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_EDGE))
            if size > 2 * _EDGE:
                fh.seek(size - _EDGE)
                h.update(fh.read(_EDGE))
            elif size > _EDGE:
                h.update(fh.read())
    return h.hexdigest()[:16]


def ref_fingerprint(ref: str) -> str:
    """A fingerprint of what ``ref`` points at (see the module docstring)."""
    if ref in SPECIAL_REFS or ref.startswith("package:"):
        return "builtin"
    try:
        return path_fingerprint(resolve_model_ref(ref))
    except ModelError:
        return "missing"


def model_fingerprints(section: Any) -> dict[str, str]:
    """{reference: fingerprint} for every model reference in a scorer list or selector config."""
    return {ref: ref_fingerprint(ref) for ref in model_refs(section)}


def changed_models(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """References named in both maps whose files differ. A reference added or removed is a config
    change (the hashes see it); one that is missing now cannot be checked and does not count."""
    return sorted(ref for ref in old.keys() & new.keys() if "missing" not in (old[ref], new[ref]) and old[ref] != new[ref])
