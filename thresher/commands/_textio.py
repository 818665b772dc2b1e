"""Read plain texts for model training: JSONL, Parquet, text files, or folders of them.

- `.jsonl` / `.json` (one JSON object a line, `.gz` allowed): the `text_field` of each object;
- `.parquet`: the `text_field` column;
- `.txt` (or any other file): one document per non-empty line;
- a folder: every file under it, recursively, by the rules above; with `file_per_doc`,
  each `.txt` file is one document instead.
Blank documents are skipped.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterable, Iterator


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no such file or folder: {path}")


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", errors="replace")


def iter_texts(paths: Iterable[str | os.PathLike[str]], text_field: str = "text",
               file_per_doc: bool = False) -> Iterator[str]:
    """Documents from files or folders (see the module docstring)."""
    for raw in paths:
        for path in _files(Path(raw).expanduser()):
            name = path.name.lower().removesuffix(".gz")
            if name.endswith(".parquet"):
                import pyarrow.parquet as pq

                table = pq.read_table(path, columns=[text_field])
                for text in table.column(text_field).to_pylist():
                    if text and text.strip():
                        yield text
            elif name.endswith((".jsonl", ".json", ".ndjson")):
                with _open_text(path) as fh:
                    for n, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        try:
                            obj = json.loads(line)
                        except ValueError as exc:
                            raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
                        text = obj.get(text_field) if isinstance(obj, dict) else None
                        if isinstance(text, str) and text.strip():
                            yield text
            elif file_per_doc:
                with _open_text(path) as fh:
                    text = fh.read()
                if text.strip():
                    yield text
            else:
                with _open_text(path) as fh:
                    for line in fh:
                        if line.strip():
                            yield line.rstrip("\n")


def read_texts(paths: Iterable[str | os.PathLike[str]], text_field: str = "text", limit: int | None = None,
               file_per_doc: bool = False) -> list[str]:
    """Up to `limit` documents as a list."""
    out: list[str] = []
    for text in iter_texts(paths, text_field, file_per_doc):
        out.append(text)
        if limit is not None and len(out) >= limit:
            break
    return out
