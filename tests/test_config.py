"""Job specs: validation errors name the file and the key; overrides; safe loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from thresher.config import JobError, load_job


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_minimal_job_gets_defaults(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, "input: {path: data/}\n"))
    assert job.selector == {"type": "all"}
    assert job.engine.name == "local"
    assert job.input.text_column == "text"


def test_unknown_top_level_key_names_file_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, "input: {path: x}\nselecter: {type: random}\n")
    with pytest.raises(JobError) as err:
        load_job(p)
    assert str(p) in str(err.value) and "selecter" in str(err.value) and "unknown key" in str(err.value)


def test_unknown_nested_key(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"input\.txt_column: unknown key"):
        load_job(write(tmp_path, "input: {path: x, txt_column: body}\n"))


def test_bad_value_names_key(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"input\.batch_rows"):
        load_job(write(tmp_path, "input: {path: x, batch_rows: -5}\n"))


def test_selector_params_are_validated(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"selector\.budgett: unknown key"):
        load_job(write(tmp_path, "input: {path: x}\nselector: {type: random, budgett: 0.1}\n"))
    with pytest.raises(JobError, match=r"selector\.budget"):
        load_job(write(tmp_path, "input: {path: x}\nselector: {type: random, budget: 1.5}\n"))
    with pytest.raises(JobError, match="unknown selector type 'best'"):
        load_job(write(tmp_path, "input: {path: x}\nselector: {type: best}\n"))


def test_unknown_scorer_type(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"unknown scorer type 'magic'"):
        load_job(write(tmp_path, "input: {path: x}\nscorers: [{type: magic}]\n"))


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    p = write(tmp_path, "input: {path: x}\nselector: {type: random, budget: 0.1}\n")
    job = load_job(p, ["selector.budget=0.3", "engine.local.workers=2", "output.path=o2"])
    assert job.selector["budget"] == 0.3 and job.engine.local.workers == 2 and job.output.path == "o2"
    with pytest.raises(JobError, match=r"selector\.budget"):
        load_job(p, ["selector.budget=lots"])
    with pytest.raises(JobError, match="expected key=value"):
        load_job(p, ["selector.budget"])


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    p = write(tmp_path, "input: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(p)


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")


def test_hashes_separate_scoring_from_selection(tmp_path: Path) -> None:
    a = load_job(data={"input": {"path": "x"}, "selector": {"type": "random", "budget": 0.1}})
    b = load_job(data={"input": {"path": "x"}, "selector": {"type": "random", "budget": 0.2}})
    assert a.score_hash() == b.score_hash()
    assert a.select_hash() != b.select_hash()


def test_seed_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"seed: Input should be greater than or equal to 0"):
        load_job(write(tmp_path, "seed: -3\n"))
    with pytest.raises(JobError, match=r"seed: Input should be less than or equal to"):
        load_job(write(tmp_path, f"seed: {2**40}\n"))
    assert load_job(write(tmp_path, "seed: 0\n")).seed == 0


def test_duplicate_key_names_key_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "input: {path: x}\nselector:\n  type: random\n  type: topk\n")
    with pytest.raises(JobError) as err:
        load_job(p)
    msg = str(err.value)
    assert str(p) in msg and "duplicate key 'type' at line 4" in msg and "line 3" in msg


def test_several_errors_are_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, "seed: -1\ninput: {path: x, batch_rows: 0}\nselecter: 1\n")
    with pytest.raises(JobError) as err:
        load_job(p)
    msg = str(err.value)
    assert "\n" not in msg and msg.count(str(p)) == 1
    assert "seed:" in msg and "input.batch_rows:" in msg and "selecter: unknown key" in msg


def test_empty_and_non_mapping_files_name_the_file(tmp_path: Path) -> None:
    for text, needle in [("", "empty"), ("# only a comment\n", "no settings"), ("[1, 2]\n", "got a list"),
                         ("42\n", "got a number")]:
        p = write(tmp_path, text)
        with pytest.raises(JobError, match=needle) as err:
            load_job(p)
        assert str(err.value).startswith(str(p))


def test_filter_value_must_fit_the_op(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"filters\.0: op '>=' needs a `value`"):
        load_job(write(tmp_path, "filters: [{column: n_words, op: '>='}]\n"))
    with pytest.raises(JobError, match=r"filters\.0: op 'not_null' takes no value"):
        load_job(write(tmp_path, "filters: [{column: n_words, op: not_null, value: 1}]\n"))
    job = load_job(write(tmp_path, "filters: [{column: n_words, op: not_null}, {column: n_words, op: '>', value: 3}]\n"))
    assert [f.op for f in job.filters] == ["not_null", ">"]


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    p = write(tmp_path, "input: {path: x}\nscorers: [{type: heuristics}]\n")
    with pytest.raises(JobError, match=r"--set 'scorers\.2\.name=h': scorers\.2: no list item"):
        load_job(p, ["scorers.2.name=h"])
    with pytest.raises(JobError, match=r"--set 'seed=\{a': value: not valid YAML"):
        load_job(p, ["seed={a"])
    assert load_job(p, ["scorers.0.name=h"]).scorers[0]["name"] == "h"


def test_job_remembers_its_file(tmp_path: Path) -> None:
    p = write(tmp_path, "input: {path: x}\n")
    job = load_job(p)
    assert job.source == str(p) and job.model_copy().source == str(p)
    assert load_job(data={"input": {"path": "x"}}).source == "<job>"
    assert job.score_hash() == load_job(data={"input": {"path": "x"}}).score_hash()  # not part of any hash


def test_quoted_override_keys_hold_dots(tmp_path: Path) -> None:
    from thresher.config import parse_override

    assert parse_override('engine.spark.conf."spark.executor.memory"=4g') == (
        ["engine", "spark", "conf", "spark.executor.memory"], "4g")
    assert parse_override("a.'x=y'.b=[1, 2]") == (["a", "x=y", "b"], [1, 2])
    assert parse_override("a.b=c=d") == (["a", "b"], "c=d")  # the first `=` outside quotes ends the key
    job = load_job(write(tmp_path, "input: {path: x}\n"), ['engine.spark.conf."spark.executor.memory"=4g'])
    assert job.engine.spark.conf == {"spark.executor.memory": "4g"}
    for bad, why in [('a."b=1', "unclosed"), ('a."b"c=1', "after a quoted key"), ("a..b=1", "empty key"),
                     ('a.""=1', "empty quoted key"), ("ab", "expected key=value")]:
        with pytest.raises(JobError, match=why):
            parse_override(bad)


def test_spark_conf_numbers_and_booleans_become_strings(tmp_path: Path) -> None:
    p = write(tmp_path, "input: {path: x}\nengine: {spark: {conf: {spark.executor.cores: 4, "
                        "spark.memory.fraction: 0.6, spark.ui.enabled: false}}}\n")
    job = load_job(p, ['engine.spark.conf."spark.task.maxFailures"=3'])
    assert job.engine.spark.conf == {"spark.executor.cores": "4", "spark.memory.fraction": "0.6",
                                     "spark.ui.enabled": "false", "spark.task.maxFailures": "3"}
    with pytest.raises(JobError, match=r"engine\.spark\.conf\.a: Input should be a valid string"):
        load_job(p, ["engine.spark.conf.a=[1]"])  # a list is still refused


def test_config_diff_compares_lists_of_mappings_item_by_item() -> None:
    from thresher.specs import config_diff

    old = {"scorers": [{"type": "heuristics", "name": None}, {"type": "clusters", "k": 20, "niter": 10}]}
    assert config_diff(old, {"scorers": [old["scorers"][0], {"type": "clusters", "k": 30, "niter": 10}]}) == [
        "scorers.1.k: 20 -> 30"]
    # a length change: one line for the count, then the items added, named briefly
    grown = {"scorers": [*old["scorers"], {"type": "perplexity", "name": "ppl", "model": "m", "batch": 8}]}
    assert config_diff(old, grown) == ["scorers: 2 items -> 3", "scorers.2: (not set) -> {type: 'perplexity', name: 'ppl'}"]
    assert config_diff(grown, old)[-1] == "scorers.2: {type: 'perplexity', name: 'ppl'} -> (not set)"
    # another type at the same place: the type and each key that differs, nothing unchanged
    assert config_diff({"selector": {"type": "topk", "budget": 0.3, "column": "x"}},
                       {"selector": {"type": "random", "budget": 0.3}}) == [
        "selector.column: 'x' -> (not set)", "selector.type: 'topk' -> 'random'"]
    assert config_diff({"input": {"path": ["a", "b"]}}, {"input": {"path": ["a", "c"]}}) == [
        "input.path: ['a', 'b'] -> ['a', 'c']"]  # plain lists stay whole


def test_output_path_is_not_part_of_the_identity(tmp_path: Path) -> None:
    a = load_job(data={"input": {"path": "x"}, "output": {"path": "out/a"}})
    b = load_job(data={"input": {"path": "x"}, "output": {"path": "elsewhere/b", "overwrite": True}})
    assert (a.score_hash(), a.select_hash()) == (b.score_hash(), b.select_hash())
    assert a.identity() == b.identity() and "path" not in a.identity()["output"]
    c = load_job(data={"input": {"path": "x"}, "output": {"path": "out/a", "compression": "snappy"}})
    assert c.select_hash() != a.select_hash()
