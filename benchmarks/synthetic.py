"""Small synthetic corpora and shard writing for tests and CPU benchmarks (no downloads).

Not part of the installed package: tests import it as `benchmarks.synthetic` (pytest puts the
repository root on the path), the benchmark scripts put the root on `sys.path` themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.common.atomic import atomic_path

NOUNS = ("cat dog bird farmer river city teacher engine garden market window storm child doctor "
         "village forest painter sailor student king queen road bridge lamp song letter mountain").split()
VERBS = ("sees likes builds finds paints carries follows watches opens closes visits remembers "
         "crosses answers writes reads").split()
ADJS = ("red quiet old young bright small large green cold warm heavy gentle strange simple").split()
ADVS = ("slowly quickly often rarely happily sadly carefully loudly").split()
DIGITS = "zero one two three four five six seven eight nine".split()


def sentence(rng: np.random.Generator) -> str:
    """One grammatical random sentence."""
    def np_() -> str:
        return f"the {rng.choice(ADJS)} {rng.choice(NOUNS)}" if rng.random() < 0.6 else f"a {rng.choice(NOUNS)}"
    s = f"{np_()} {rng.choice(VERBS)} {np_()}"
    if rng.random() < 0.4:
        s += f" {rng.choice(ADVS)}"
    return s[0].upper() + s[1:] + "."


def diverse_doc(rng: np.random.Generator, n_sent: tuple[int, int] = (4, 9)) -> str:
    return " ".join(sentence(rng) for _ in range(int(rng.integers(*n_sent))))


def template_docs(rng: np.random.Generator, n: int, n_templates: int = 4) -> list[str]:
    """Near-duplicates of a few fixed templates (one slot varies)."""
    base = np.random.default_rng(12345)
    templates = [" ".join(sentence(base) for _ in range(6)) + " Item {slot}." for _ in range(n_templates)]
    return [templates[int(rng.integers(n_templates))].format(slot=int(rng.integers(10))) for _ in range(n)]


def redundant_corpus(n_docs: int, template_fraction: float = 0.5, seed: int = 0) -> list[dict[str, Any]]:
    """Pretraining rows: ``template_fraction`` template repeats, the rest diverse text."""
    rng = np.random.default_rng(seed)
    n_t = int(round(n_docs * template_fraction))
    rows = [{"id": f"t{i}", "text": t, "kind": "template"} for i, t in enumerate(template_docs(rng, n_t))]
    rows += [{"id": f"d{i}", "text": diverse_doc(rng), "kind": "diverse"} for i in range(n_docs - n_t)]
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


TASKS = ("reverse", "copy", "sort", "next")


def task_answer(task: str, words: Sequence[str]) -> list[str]:
    if task == "reverse":
        return list(reversed(words))
    if task == "copy":
        return list(words)
    if task == "sort":
        return sorted(words)
    return [DIGITS[(DIGITS.index(w) + 1) % 10] for w in words]  # next digit


def instruction_rows(n: int, noise: float = 0.0, seed: int = 0, length: tuple[int, int] = (4, 8)
                     ) -> list[dict[str, Any]]:
    """Deterministic word tasks; ``noise`` = fraction of response words replaced at random.

    Each row also carries ``clean`` (the correct response) and ``noisy_words`` (indices).
    """
    rng = np.random.default_rng(seed)
    vocab = list(DIGITS)
    rows = []
    for i in range(n):
        task = TASKS[int(rng.integers(len(TASKS)))]
        words = [vocab[int(rng.integers(len(vocab)))] for _ in range(int(rng.integers(*length)))]
        ans = task_answer(task, words)
        noisy = list(ans)
        bad = [j for j in range(len(ans)) if rng.random() < noise]
        for j in bad:
            noisy[j] = vocab[int(rng.integers(len(vocab)))]
        rows.append({"id": f"r{i}", "prompt": f"{task}: {' '.join(words)}", "response": " ".join(noisy),
                     "clean": " ".join(ans), "noisy_words": bad})
    return rows


def write_shards(rows: Sequence[dict[str, Any]], folder: str | os.PathLike[str], n_shards: int = 2,
                 row_group_size: int | None = None, schema: pa.Schema | None = None) -> list[Path]:
    """Write rows as ``part-%05d.parquet`` shards (contiguous splits), atomically."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    bounds = np.linspace(0, len(rows), n_shards + 1).astype(int)
    for k in range(n_shards):
        part = list(rows[bounds[k]:bounds[k + 1]])
        table = pa.Table.from_pylist(part, schema=schema)
        path = out / f"part-{k:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=row_group_size)
        paths.append(path)
    return paths
