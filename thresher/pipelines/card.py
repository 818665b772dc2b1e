"""The dataset card of an output folder: `_README.md` and `.huggingface.yaml`.

`_README.md` is a Hugging Face dataset card: YAML front matter whose `configs:` name the parts
(`data_files: [{split: train, path: "part-*.parquet"}]`), then what a reader needs: row counts
(input, selected, not selected and rejected by reason), the method and its paper, the columns and
where each comes from, how to load the folder (datasets, pandas, Spark, DuckDB), the job (YAML,
secrets redacted, absolute paths made relative to the folder) and the parts with their checksums.

Why `_README.md` and not `README.md`: readers that take the folder as a Parquet dataset
(`pandas.read_parquet`, `pyarrow.dataset`, `spark.read.parquet`) skip only `_` and `.` names and
fail on any other file that is not Parquet. `datasets.load_dataset(folder)` reads the same
`configs:` from `.huggingface.yaml` (locally and on the Hub), so it loads exactly the parts; to
publish the folder, upload the parts and `.huggingface.yaml`, and `_README.md` as `README.md`.

Both files are written atomically by `run_job` after the parts and before the manifest; they
hold no timings, so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pyarrow as pa
import yaml

from thresher.common.atomic import write_text_atomic
from thresher.io import storage
from thresher.io.output import CARD_NAME, HF_YAML_NAME, OutputLayout
from thresher.specs import JobError
from thresher.version import __version__

PARTS_GLOB = "part-*.parquet"
MAX_PART_LINES = 20
_SECRET_KEY = re.compile(r"secret|passw|credential|(^|[._-])(api|access|private|auth)[._-]?key$|(^|[._-])token$",
                         re.IGNORECASE)

SELECTORS: dict[str, str] = {
    "all": "every row that passes the filters (a baseline: no selection beyond the filters)",
    "random": "a uniform random sample of the budget (a baseline)",
    "topk": "the rows with the highest value of one score column, up to the budget (a baseline)",
    "threshold": "the rows whose score passes a threshold (a baseline)",
    "datamask": "DATAMASK: quality and diversity selected jointly by policy-gradient mask learning "
                "([arXiv 2512.24265](https://arxiv.org/abs/2512.24265))",
    "greedy": "greedy maximisation of the DATAMASK objective, the greedy baseline of the DATAMASK paper "
              "([arXiv 2512.24265](https://arxiv.org/abs/2512.24265))",
    "icon": "ICon: in-context contribution labels, learnt by a classifier that scores the pool, the top K% "
            "([arXiv 2505.05327](https://arxiv.org/abs/2505.05327))",
}
SCORERS: dict[str, str] = {
    "heuristics": "heuristic quality rules and statistics (Gopher, C4, FineWeb)",
    "perplexity": "perplexity under a causal language model",
    "classifier": "a sequence-classification (or regression) model's score",
    "fasttext": "a fastText quality classifier",
    "langid": "fastText language identification",
    "embedding": "sentence embeddings (L2-normalised)",
    "icon": "ICon in-context contribution scores ([arXiv 2505.05327](https://arxiv.org/abs/2505.05327))",
    "clusters": "k-means clusters of the embeddings and SemDeDup near-duplicate flags",
}
TRAINING: dict[str, str] = {
    "reweight": "loss-based sample reweighting ([arXiv 2502.06733](https://arxiv.org/abs/2502.06733))",
    "sstoken": "ssToken token selection ([arXiv 2510.18250](https://arxiv.org/abs/2510.18250))",
}


def hf_configs() -> dict[str, Any]:
    """The `configs:` of the card: one config, one `train` split, the parts."""
    return {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": PARTS_GLOB}]}]}


def write_card(manifest: dict[str, Any], layout: OutputLayout) -> None:
    """Write `.huggingface.yaml`, then `_README.md` (each atomically)."""
    write_text_atomic(yaml.safe_dump(hf_configs(), sort_keys=False), layout.hf_yaml)
    write_text_atomic(card_text(manifest, layout), layout.card)


def card_text(manifest: dict[str, Any], layout: OutputLayout) -> str:
    """The card (front matter and body) of a finished run's manifest."""
    job = manifest["job"]
    front = {**hf_configs(), "tags": ["thresher", "data-selection"], "pretty_name": job["name"]}
    out_ref = _rel(job["output"]["path"], layout.root.parent) if os.path.isabs(job["output"]["path"]) \
        else job["output"]["path"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {job['name']}", "",
             f"The rows of this dataset were selected by thresher "
             f"{manifest.get('thresher_version', __version__)} from {manifest['counts']['input_rows']:,} input rows "
             f"({len(manifest['inputs'])} input shard(s)), engine `{manifest['engine']}`.", ""]
    lines += _counts(manifest)
    lines += _method(job)
    lines += _columns(manifest, layout, job)
    lines += _loading(out_ref)
    lines += ["## Job", "", "The job this folder was written by (`_manifest.json` holds all of it, with the "
              "hashes and input fingerprints):", "", "```yaml",
              yaml.safe_dump(_card_job(job, layout), sort_keys=False).rstrip(), "```", ""]
    lines += _parts(manifest)
    return "\n".join(lines) + "\n"


def _counts(manifest: dict[str, Any]) -> list[str]:
    c = manifest["counts"]
    n = max(c["input_rows"], 1)
    rows = [("input rows", c["input_rows"]), ("**selected** (the rows of this dataset)", c["selected"])]
    rows.append(("not selected", c["not_selected"]["total"]))
    rows += [(f"&nbsp;&nbsp;{_md(reason)}", k) for reason, k in sorted(c["not_selected"]["by_reason"].items())]
    rows.append(("rejected (unusable input rows)", c["rejected"]["total"]))
    rows += [(f"&nbsp;&nbsp;{_md(reason)}", k) for reason, k in sorted(c["rejected"]["by_reason"].items())]
    out = ["## Rows", "", "| | rows | share |", "| --- | ---: | ---: |"]
    out += [f"| {label} | {k:,} | {100 * k / n:.1f}% |" for label, k in rows]
    if c.get("selected_words") is not None:
        out += ["", f"The selected rows hold {c['selected_words']:,} words (`n_words`)."]
    out += ["", "Not selected: `filter:...` rows failed a filter, `not_chosen` rows were eligible but the "
            "selector did not pick them. Rejected rows (bad JSON, empty text, duplicate ids, ...) are in "
            "`_rejected/` with their raw bytes.", ""]
    return out


def _method(job: dict[str, Any]) -> list[str]:
    sel = job.get("selector") or {}
    kind = sel.get("type", "all")
    params = {k: v for k, v in sel.items() if k != "type"}
    out = ["## Method", "", f"Selector `{kind}`: {SELECTORS.get(kind, 'a thresher selector')}."]
    if "budget" in params:
        out.append(f"Budget: {params['budget']}" + (f" ({params['budget_unit']})" if "budget_unit" in params else "")
                   + ".")
    if job.get("scorers"):
        out += ["", "Scorers (their columns are in the parts, prefixed with the scorer's name):", ""]
        for s in job["scorers"]:
            name = s.get("name") or s["type"]
            out.append(f"- `{name}` ({s['type']}): {SCORERS.get(s['type'], 'a thresher scorer')}")
    if job.get("filters"):
        out += ["", "Filters (a row must pass all of them to be eligible):", ""]
        for f in job["filters"]:
            value = "" if f.get("op") in ("is_null", "not_null") else f" {f.get('value')!r}"
            out.append(f"- `{f['column']} {f.get('op', '==')}{value}`")
    train = job.get("train") or {}
    used = [TRAINING[k] for k in TRAINING if train.get(k)]
    if used:
        out += ["", f"The job also trains on the selection (`thresher train`) with {', '.join(used)}."]
    return out + [""]


def _source_of(name: str, job: dict[str, Any], score_cols: set[str], sel_cols: set[str]) -> str:
    inp = job.get("input") or {}
    if name == "id":
        return (f"the input's `{inp['id_column']}` column" if inp.get("id_column")
                else "made by thresher: the input file (relative to the input folder) and the row number")
    if name == "text":
        return ("prompt and response joined (instruction data)" if inp.get("prompt_column")
                else f"the input's `{inp.get('text_column', 'text')}` column")
    if name in ("prompt", "response") and inp.get("prompt_column"):
        return f"the input's `{inp.get(name + '_column')}` column"
    if name == "n_chars":
        return "thresher: characters in `text`"
    if name == "n_words":
        return "thresher: whitespace-separated words in `text`"
    if name in score_cols or name in sel_cols:
        for s in job.get("scorers") or []:
            prefix = s.get("name") or s["type"]
            if name.startswith(prefix + "_"):
                return f"scorer `{prefix}` ({s['type']})"
        if name in sel_cols:
            return f"selector `{(job.get('selector') or {}).get('type', '?')}`"
        return "a scorer"
    if name == "meta":
        return "the input (JSONL: its other keys, as JSON)"
    return "the input (passed through)"


def _columns(manifest: dict[str, Any], layout: OutputLayout, job: dict[str, Any]) -> list[str]:
    parts = manifest.get("shards") or []
    if not parts:
        return []
    schema = storage.read_schema(layout.root / parts[0]["file"])
    score_cols = _names(layout.scores(0), skip=("id", "_shard", "_row"))
    sel_cols = _names(layout.selection(0), skip=("_row", "status", "reason"))
    out = ["## Columns", "", "| column | type | from |", "| --- | --- | --- |"]
    out += [f"| `{f.name}` | {_md(str(f.type))} | {_source_of(f.name, job, score_cols, sel_cols)} |"
            for f in schema]
    columns = (job.get("output") or {}).get("columns")
    if columns:
        gone = sorted((score_cols | sel_cols) - set(schema.names))
        chosen = {k: v for k, v in columns.items() if v is not None}
        out += ["", f"`output.columns: {_inline(chosen)}` chose these columns"
                + (f"; not written here: {', '.join(f'`{c}`' for c in gone)}" if gone else "")
                + ". Every score is still in `_scores/` (and selector columns in `_selection/`)."]
    return out + [""]


def _names(path: Any, skip: tuple[str, ...]) -> set[str]:
    try:
        return {n for n in storage.read_schema(path).names if n not in skip}
    except (OSError, pa.ArrowInvalid, JobError):
        return set()


def _loading(out: str) -> list[str]:
    return ["## Loading", "", "The folder is a Parquet dataset: `part-*.parquet` are the selected rows, in input "
            "order (shard, then row); every other name starts with `_` or `.`.", "", "```python",
            "import datasets",
            f"ds = datasets.load_dataset({out!r}, split=\"train\")   # reads .huggingface.yaml: the parts only",
            "",
            "import pandas as pd",
            f"df = pd.read_parquet({out!r})",
            "",
            f"df = spark.read.parquet({out!r})                      # PySpark skips _ and . names",
            "",
            "import duckdb",
            f"duckdb.sql(\"SELECT * FROM read_parquet('{out}/{PARTS_GLOB}')\")",
            "```", "",
            "To publish it on the Hugging Face Hub, upload the parts and `.huggingface.yaml`, and this card as "
            "`README.md`:", "", "```sh",
            f"huggingface-cli upload ORG/NAME {out} . --repo-type dataset --include '{PARTS_GLOB}' "
            f"'{HF_YAML_NAME}'",
            f"huggingface-cli upload ORG/NAME {out}/{CARD_NAME} README.md --repo-type dataset",
            "```", ""]


def _parts(manifest: dict[str, Any]) -> list[str]:
    parts = manifest.get("shards") or []
    total = sum(p["bytes"] for p in parts)
    out = ["## Files", "", f"{len(parts)} part(s), {sum(p['rows'] for p in parts):,} rows, {total:,} bytes.", "",
           "| file | rows | bytes | sha256 |", "| --- | ---: | ---: | --- |"]
    out += [f"| {p['file']} | {p['rows']:,} | {p['bytes']:,} | `{p['sha256']}` |" for p in parts[:MAX_PART_LINES]]
    if len(parts) > MAX_PART_LINES:
        out.append(f"| ... {len(parts) - MAX_PART_LINES} more in `_manifest.json` | | | |")
    return out + [""]


def _card_job(job: dict[str, Any], layout: OutputLayout) -> dict[str, Any]:
    """The job for the card: secrets redacted, absolute input paths relative to the folder, no
    `engine` (where it ran says nothing about the data, and a cluster's address is the machine's)."""
    out = _redact({k: v for k, v in job.items() if k != "engine"})
    inp = out.get("input") or {}
    path = inp.get("path")
    if isinstance(path, str):
        inp["path"] = _rel(path, layout.root)
    elif isinstance(path, list):
        inp["path"] = [_rel(p, layout.root) for p in path]
    if isinstance(out.get("output"), dict):
        out["output"]["path"] = "."
        out["output"].pop("overwrite", None)
    return out


def _rel(path: str, start: Any) -> str:
    if not isinstance(path, str) or not os.path.isabs(os.path.expanduser(path)) or storage.is_remote(start):
        return path  # a URI, a relative path, or a folder on an object store: as given
    return os.path.relpath(os.path.expanduser(path), start)


def _redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: "<redacted>" if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                else _redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


def _inline(obj: Any) -> str:
    return yaml.safe_dump(obj, default_flow_style=True, sort_keys=False).strip()


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")
