"""Hardening: a bad job is one line `thresher: error: ...` naming the file and the key, exit code 2.

The battery below feeds `thresher run` (in process, through `cli.main`) bad job files: YAML
that does not parse, alias bombs, huge, binary and empty files, duplicate and unknown keys,
wrong types, out-of-range values, unknown types, and plan-time errors (columns a filter or
selector names that the job will not produce, filter values of the wrong type, devices).
Every case must fail before the output folder is created. The tests after it cover what
goes wrong later: damaged state files and markers, a full disk, model folders with pickles
or custom code, a hub id that is not cached, a failing scorer, `thresher train` without
shards, `thresher select` with a bad filter, and `--debug`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from thresher.commands.cli import main

CORPUS_ROWS = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    docs = [f"document number {i} has a few words in it, {'and more ' * (i % 5)}done." for i in range(CORPUS_ROWS)]
    pq.write_table(pa.table({"text": docs, "url": [f"https://example.com/{i}" for i in range(CORPUS_ROWS)]}),
                   folder / "part.parquet")
    return folder


def base_job(corpus: Path, out: Path) -> dict[str, Any]:
    return {"input": {"path": str(corpus)}, "engine": {"local": {"workers": 1}}, "output": {"path": str(out)}}


def alias_bomb() -> str:
    lines = ["engine:", "  name: beam", "  beam:", "    options:", "      a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"      a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    id: str
    body: Any  # dict: merged over the base job (top-level keys); str: YAML text ({corpus}, {out}); bytes
    expect: tuple[str, ...]  # substrings of the error line (the key, what is wrong)
    args: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


HEUR = [{"type": "heuristics"}]
CASES = [
    # -- the file itself --------------------------------------------------------------------
    Case("yaml-unclosed-flow", "input: [path: {corpus}\n", ("not valid YAML", "line 2")),
    Case("yaml-bad-indent", "input:\n  path: {corpus}\n text_column: x\n", ("not valid YAML", "line 3")),
    Case("yaml-tabs", "input:\n\tpath: {corpus}\n", ("not valid YAML", "tabs", "line 2")),
    Case("yaml-python-tag", "input: !!python/object/apply:os.system ['echo hacked']\n", ("not valid YAML", "python/object")),
    Case("yaml-alias-bomb", alias_bomb(), ("alias", "1,000,000")),
    Case("yaml-recursive-alias", "input: &a {{path: {corpus}, x: *a}}\n", ("recursive alias", "line 1")),
    Case("yaml-undefined-alias", "input: *nope\n", ("not valid YAML", "nope")),
    Case("file-huge", "seed: 1\n# " + "x" * (1 << 20) + "\n", ("bytes", "1,048,576")),
    Case("file-binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ("binary file",)),
    Case("file-not-utf8", "name: caf\xe9\n".encode("latin-1"), ("not UTF-8", "line 1")),
    Case("file-empty", "", ("empty",)),
    Case("file-only-comments", "# a job, some day\n", ("no settings",)),
    Case("top-level-list", "- input\n- output\n", ("mapping", "list")),
    Case("top-level-scalar", "just some words\n", ("mapping", "str")),
    Case("dup-key-top", "seed: 1\ninput: {{path: {corpus}}}\nseed: 2\n", ("duplicate key 'seed'", "line 3", "line 1")),
    Case("dup-key-nested", "input: {{path: {corpus}}}\nselector:\n  type: random\n  budget: 0.1\n  budget: 0.2\n",
         ("duplicate key 'budget'", "line 5")),
    # -- unknown keys, at every level --------------------------------------------------------
    Case("unknown-top", {"selecter": {"type": "random"}}, ("selecter: unknown key",)),
    Case("unknown-input", {"input": {"path": "{corpus}", "txt_column": "body"}}, ("input.txt_column: unknown key",)),
    Case("unknown-engine", {"engine": {"locall": {}}}, ("engine.locall: unknown key",)),
    Case("unknown-engine-local", {"engine": {"local": {"worker": 2}}}, ("engine.local.worker: unknown key",)),
    Case("unknown-output", {"output": {"path": "{out}", "compresion": "zstd"}}, ("output.compresion: unknown key",)),
    Case("unknown-scorer-param", {"scorers": [{"type": "heuristics", "min_wordz": 3}]},
         ("scorers.0.min_wordz: unknown key",)),
    Case("unknown-selector-param", {"selector": {"type": "random", "budgett": 0.1}}, ("selector.budgett: unknown key",)),
    Case("unknown-filter-key", {"filters": [{"column": "n_words", "opp": ">", "value": 3}]},
         ("filters.0.opp: unknown key",)),
    Case("unknown-train-key", {"train": {"stepz": 3}}, ("train.stepz: unknown key",)),
    # -- wrong types ---------------------------------------------------------------------------
    Case("type-seed", {"seed": "abc"}, ("seed:", "integer")),
    Case("type-scorers-mapping", {"scorers": {"type": "heuristics"}}, ("scorers:", "list")),
    Case("type-batch-rows", {"input": {"path": "{corpus}", "batch_rows": "many"}}, ("input.batch_rows:",)),
    Case("type-overwrite", {"output": {"path": "{out}", "overwrite": "maybe"}}, ("output.overwrite:",)),
    Case("type-filter-op", {"filters": [{"column": "n_words", "op": "~=", "value": 3}]}, ("filters.0.op:",)),
    # -- out of range ----------------------------------------------------------------------------
    Case("range-budget-0", {"selector": {"type": "random", "budget": 0}}, ("selector.budget:", "greater than 0")),
    Case("range-budget-2", {"selector": {"type": "random", "budget": 2}}, ("selector.budget:", "less than or equal to 1")),
    Case("range-seed-negative", {"seed": -1}, ("seed:", "greater than or equal to 0")),
    Case("range-seed-huge", {"seed": 2**40}, ("seed:", "less than or equal to")),
    Case("range-workers-0", {"engine": {"local": {"workers": 0}}}, ("engine.local.workers:", "greater than 0")),
    Case("range-workers-0-flag", {}, ("engine.local.workers:", "greater than 0"), args=("--workers", "0")),
    Case("range-batch-rows-0", {"input": {"path": "{corpus}", "batch_rows": 0}}, ("input.batch_rows:",)),
    Case("range-output-path-empty", {"output": {"path": ""}}, ("output.path:",)),
    # -- types of scorers, selectors, engines ----------------------------------------------------
    Case("unknown-scorer-type", {"scorers": [{"type": "magic"}]}, ("scorers.0:", "unknown scorer type 'magic'")),
    Case("unknown-selector-type", {"selector": {"type": "best"}}, ("selector:", "unknown selector type 'best'")),
    Case("unknown-engine-name", {"engine": {"name": "flink"}}, ("engine.name:",)),
    Case("missing-scorer-type", {"scorers": [{"name": "h"}]}, ("scorers.0:", "`type`")),
    Case("missing-selector-type", {"selector": {"budget": 0.1}}, ("selector:", "`type`")),
    Case("duplicate-scorer-names", {"scorers": [{"type": "heuristics"}, {"type": "heuristics"}]},
         ("scorers:", "unique", "heuristics")),
    Case("datamask-without-quality", {"selector": {"type": "datamask", "budget": 0.1}}, ("selector:", "quality")),
    # -- plan time: columns, values, devices -----------------------------------------------------
    Case("filter-missing-column", {"scorers": HEUR, "filters": [{"column": "heuristic_pass", "value": True}]},
         ("filters.0.column:", "'heuristic_pass'", "did you mean 'heuristics_pass'")),
    Case("filter-string-vs-int", {"filters": [{"column": "n_words", "op": ">", "value": "10"}]},
         ("filters.0.value:", "'10' is a string", "n_words", "without quotes")),
    Case("filter-int-vs-string", {"filters": [{"column": "id", "op": "==", "value": 3}]},
         ("filters.0.value:", "column 'id' holds strings")),
    Case("filter-string-vs-bool", {"scorers": HEUR, "filters": [{"column": "heuristics_pass", "value": "yes"}]},
         ("filters.0.value:", "booleans")),
    Case("filter-needs-value", {"filters": [{"column": "n_words", "op": ">"}]}, ("filters.0:", "needs a `value`")),
    Case("filter-null-op-with-value", {"filters": [{"column": "n_words", "op": "is_null", "value": 3}]},
         ("filters.0:", "takes no value")),
    Case("selector-missing-column", {"selector": {"type": "topk", "column": "n_wrds", "budget": 0.5}},
         ("selector.column:", "did you mean 'n_words'")),
    Case("selector-string-column", {"selector": {"type": "topk", "column": "id", "budget": 0.5}},
         ("selector.column:", "holds string")),
    Case("selector-token-column", {"selector": {"type": "random", "budget": 0.5, "budget_unit": "tokens",
                                                "token_column": "n_tokens"}}, ("selector.token_column:", "n_tokens")),
    Case("datamask-missing-embedding", {"selector": {"type": "datamask", "quality": "n_words", "budget": 0.5}},
         ("selector.embedding:", "'embedding_vector'")),
    Case("datamask-misspelt-embedding", {"scorers": [{"type": "embedding"}], "selector": {
        "type": "datamask", "quality": "n_words", "embedding": "embedding_vectr", "budget": 0.5}},
         ("selector.embedding:", "did you mean 'embedding_vector'")),
    Case("datamask-misspelt-quality-weight", {"scorers": HEUR, "selector": {
        "type": "greedy", "quality_weights": {"heuristics_n_word": 1.0}, "budget": 0.5}},
         ("selector.quality_weights.heuristics_n_word:", "did you mean 'heuristics_n_words'")),
    Case("global-scorer-missing-input", {"scorers": [{"type": "clusters"}]},
         ("scorers.0.embedding_column:", "'embedding_vector'")),
    Case("scorer-column-clash", {"scorers": [{"type": "heuristics", "name": ""}]},
         ("scorers.0:", "'n_chars' is already taken")),
    Case("icon-selector-needs-instruction-data", {
        "scorers": [{"type": "icon", "model": "smollm2", "assessment": "a.jsonl"}],
        "selector": {"type": "icon", "classifier": "lora", "budget": 0.5}},
         ("selector:", "'prompt'", "input.prompt_column")),
    Case("selector-model-missing", {
        "scorers": [{"type": "icon", "model": "smollm2", "assessment": "a.jsonl"}],
        "selector": {"type": "icon", "classifier": "lora", "classifier_model": "/no/such/model", "budget": 0.5}},
         ("selector.classifier_model:", "/no/such/model", "not found")),
    Case("bad-device", {"scorers": [{"type": "perplexity", "model": "tiny", "device": "gpu"}]},
         ("scorers.0.device:", "'gpu'")),
    Case("bad-device-index", {"scorers": [{"type": "embedding", "device": "cuda:x"}]}, ("scorers.0.device:", "'cuda:x'")),
    Case("bad-dtype", {"scorers": [{"type": "perplexity", "model": "tiny", "dtype": "int3"}]},
         ("scorers.0.dtype:", "'int3'")),
    Case("bad-selector-device", {"selector": {"type": "datamask", "quality": "n_words", "device": "gpu"}},
         ("selector.device:",)),
    Case("input-path-missing", {"input": {"path": "{corpus}/../no-such-folder"}}, ("input.path:", "no such file")),
    Case("input-glob-no-match", {"input": {"path": "{corpus}/*.jsonl"}}, ("input.path:", "matches no file")),
    Case("input-path-list-item-missing", {"input": {"path": ["{corpus}", "/no/such/file.parquet"]}},
         ("input.path.1:", "no such file")),
    # -- bad --set overrides -------------------------------------------------------------------
    Case("set-no-equals", {}, ("--set 'selector.budget'", "key=value"), args=("--set", "selector.budget")),
    Case("set-bad-yaml", {}, ("--set 'seed=[1'", "not valid YAML"), args=("--set", "seed=[1")),
    Case("set-under-a-string", {}, ("--set 'input.path.x=1'", "input.path is a str"), args=("--set", "input.path.x=1")),
    Case("set-list-index", {"scorers": HEUR}, ("--set 'scorers.3.name=x'", "no list item"),
         args=("--set", "scorers.3.name=x")),
    Case("set-empty-key-part", {}, ("--set 'selector..budget=1'", "empty key"), args=("--set", "selector..budget=1")),
    Case("set-bad-value", {}, ("selector.budget:",), args=("--set", "selector={type: random, budget: lots}")),
]


def write_job(case: Case, corpus: Path, out: Path, folder: Path) -> Path:
    path = folder / f"{case.id}.yaml"
    if isinstance(case.body, bytes):
        path.write_bytes(case.body)
    elif isinstance(case.body, str):
        path.write_text(case.body.replace("{corpus}", str(corpus)).replace("{out}", str(out)), encoding="utf-8")
    else:
        job = base_job(corpus, out)
        text = yaml.safe_dump({**job, **case.body}, sort_keys=False)
        path.write_text(text.replace("{corpus}", str(corpus)).replace("{out}", str(out)), encoding="utf-8")
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("thresher: error: "), lines[0]
    return lines[0]


def test_battery_has_enough_cases() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_job_is_one_line_naming_file_and_key(case: Case, corpus: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    path = write_job(case, corpus, out, tmp_path)
    assert main(["run", str(path), "-q", *case.args]) == 2
    line = one_error_line(capsys)
    assert str(path) in line, line
    for needle in case.expect:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not out.exists(), "a job refused at load or plan time must not create its output folder"


def test_alias_bomb_fails_fast_in_a_fresh_process(tmp_path: Path) -> None:
    """The real entry point, bounded by a timeout: a bomb is refused in well under a second of work."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    res = subprocess.run([sys.executable, "-m", "thresher", "run", str(path)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "alias" in res.stderr and str(path) in res.stderr


def test_ordinary_anchors_and_merge_keys_still_work(corpus: Path, tmp_path: Path) -> None:
    from thresher.config import load_job

    path = tmp_path / "ok.yaml"
    # an anchor reused once, and a merge key whose value the mapping's own key overrides
    path.write_text(f"input: &inp\n  path: {corpus}\n  batch_rows: 64\n"
                    "selector: {type: random, budget: 0.5, token_column: n_words}\n"
                    "engine: {beam: {options: {copy: *inp}}}\n")
    job = load_job(path)
    assert job.input.batch_rows == 64 and job.engine.beam.options["copy"]["batch_rows"] == 64
    path.write_text(f"input:\n  <<: {{path: {corpus}, batch_rows: 64}}\n  batch_rows: 32\n")
    assert load_job(path).input.batch_rows == 32


# -- plan-time checks on `thresher select` ------------------------------------------------------------
def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "lock"}


def _run_ok(corpus: Path, out: Path, tmp_path: Path, **job: Any) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**base_job(corpus, out), **job}))
    assert main(["run", str(path), "-q"]) == 0
    return path


def test_select_with_a_bad_filter_fails_before_touching_the_folder(corpus: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    _run_ok(corpus, out, tmp_path, scorers=HEUR)
    before = _digest(out)
    capsys.readouterr()
    rc = main(["select", str(out), "-q", "--set", "filters=[{column: heuristics_pas, op: '==', value: true}]"])
    assert rc == 2
    line = one_error_line(capsys)
    assert "filters.0.column" in line and "did you mean 'heuristics_pass'" in line and "state.json" in line
    assert _digest(out) == before


# -- damaged run state, full disk ----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["state", "marker"])
def test_corrupt_state_or_marker_names_the_file(corpus: Path, tmp_path: Path, damage: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    job = _run_ok(corpus, out, tmp_path)
    target = out / "_thresher" / ("state.json" if damage == "state" else "done/score-00000.json")
    target.write_text('{"score_hash": "abc", ')  # cut short, as a crash mid-write on a bad disk would
    capsys.readouterr()
    assert main(["run", str(job), "-q"]) == 2
    line = one_error_line(capsys)
    assert str(target) in line and "corrupt" in line and "--overwrite" in line
    assert main(["run", str(job), "-q", "--overwrite"]) == 0


def test_disk_full_names_the_output_file(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def full(self: Any, *_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(base_job(corpus, tmp_path / "out")))
    assert main(["run", str(path), "-q"]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "out" / "_scores" / "part-00000.parquet") in line and "No space left" in line
    assert not list((tmp_path / "out").rglob(".*.tmp-*"))  # the temporary went with the error


def test_atomic_write_failure_is_a_write_error_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from thresher.common import atomic
    from thresher.specs import JobError

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    target = tmp_path / "deep" / "x.json"
    with pytest.raises(atomic.WriteError) as err:
        atomic.write_json_atomic({"a": 1}, target)
    assert isinstance(err.value, JobError) and isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert str(target) in str(err.value) and "\n" not in str(err.value)
    assert not target.exists() and not list(target.parent.iterdir())


# -- models, scorers ---------------------------------------------------------------------------------
def _model_job(corpus: Path, tmp_path: Path, model: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**base_job(corpus, tmp_path / "out"),
                                    "scorers": [{"type": "perplexity", "model": model, "device": "cpu"}]}))
    return path


class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned",))


def test_model_folder_with_a_pickle_is_refused(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from safetensors.torch import load_file

    from conftest_models import tiny_gpt2

    folder = tiny_gpt2(tmp_path / "lm")
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save({"weights": weights, "payload": _Evil()}, folder / "pytorch_model.bin")
    capsys.readouterr()
    assert main(["run", str(_model_job(corpus, tmp_path, str(folder))), "-q"]) == 2
    line = one_error_line(capsys)
    assert str(folder) in line and "pickle" in line and "safetensors" in line


def test_model_needing_custom_code_names_the_key(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest_models import tiny_gpt2

    folder = tiny_gpt2(tmp_path / "custom")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="my_custom_lm", auto_map={"AutoConfig": "configuration_my.MyConfig",
                                                    "AutoModelForCausalLM": "modeling_my.MyModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "configuration_my.py").write_text("raise SystemExit('custom code must not run')\n")
    capsys.readouterr()
    assert main(["run", str(_model_job(corpus, tmp_path, str(folder))), "-q"]) == 2
    line = one_error_line(capsys)
    assert str(folder) in line and "trust_remote_code: true" in line


def test_hub_id_not_cached_says_nothing_is_downloaded(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["run", str(_model_job(corpus, tmp_path, "someorg/not-cached-xyz")), "-q"]) == 2
    line = one_error_line(capsys)
    assert "someorg/not-cached-xyz" in line and "nothing was downloaded" in line


def test_scorer_error_is_one_line(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from thresher.scorers.heuristics import HeuristicScorer

    def broken(self: Any, batch: Any) -> Any:
        raise ValueError("broken on purpose\nsecond line")

    monkeypatch.setattr(HeuristicScorer, "score", broken)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**base_job(corpus, tmp_path / "out"), "scorers": HEUR}))
    assert main(["run", str(path), "-q"]) == 2
    line = one_error_line(capsys)
    assert "scorer 'heuristics' failed" in line and "broken on purpose" in line


# -- train, --debug --------------------------------------------------------------------------------------
def test_train_without_shards_names_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"output": {"path": str(tmp_path / "never-run")}, "train": {"steps": 1}}))
    assert main(["train", str(path)]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "never-run") in line and "output.path" in line and str(path) in line
    assert main(["train", str(path), "--data", str(tmp_path / "nope")]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "nope") in line and "train.data" in line


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("seed: -1\n")
    argv = ["--debug", "run", str(path)] if where == "before" else ["run", str(path), "--debug"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "JobError" in err
    assert err.strip().splitlines()[-1].startswith("thresher: error: ")
    assert main(["run", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_scorer_that_cannot_start_is_one_line(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file named in a scorer's params that is missing (here the icon assessment set) is one line."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**base_job(corpus, tmp_path / "out"), "scorers": [
        {"type": "icon", "model": "smollm2", "assessment": str(tmp_path / "no-such.jsonl")}]}))
    assert main(["run", str(path), "-q"]) == 2
    line = one_error_line(capsys)
    assert "scorer 'icon' could not start" in line and str(tmp_path / "no-such.jsonl") in line
