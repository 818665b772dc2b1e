"""A resumed run notices model files that changed under the same path."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import job_dict
from thresher.config import JobError, load_job
from thresher.io.output import OutputLayout
from thresher.io.readers import plan_shards
from thresher.models.fingerprint import changed_models, model_fingerprints, model_refs, path_fingerprint
from thresher.pipelines.runner import prepare_output


def fake_model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_refs_are_found_anywhere_in_a_section() -> None:
    scorers = [{"type": "perplexity", "model": "/m/a"}, {"type": "classifier", "model": {"x": 1}},
               {"type": "icon", "classifier": {"classifier_model": "/m/b", "tokenizer": "/m/c"}}]
    assert model_refs(scorers) == ["/m/a", "/m/b", "/m/c"]
    assert model_refs({"type": "topk", "column": "q"}) == []


def test_fingerprint_follows_content_not_time(tmp_path: Path) -> None:
    m = fake_model(tmp_path / "m", b"\x01" * (3 << 20))
    before = path_fingerprint(m)
    (m / "model.safetensors").touch()  # a new modification time, the same bytes
    assert path_fingerprint(m) == before
    data = bytearray((m / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # a change in the last MiB of a 3 MiB file
    (m / "model.safetensors").write_bytes(bytes(data))
    assert path_fingerprint(m) != before
    assert model_fingerprints([{"model": "smollm2"}]) == {"smollm2": "builtin"}  # never exported here
    assert model_fingerprints([{"model": str(tmp_path / "nope")}]) == {str(tmp_path / "nope"): "missing"}
    assert changed_models({"a": "1", "b": "2", "c": "missing"}, {"a": "1", "b": "3", "c": "4"}) == ["b"]


def test_changed_model_files_refuse_resume_until_overwrite(tmp_path: Path, corpus: Path) -> None:
    model = fake_model(tmp_path / "clf", b"first weights")
    data = job_dict(corpus, tmp_path / "out",
                    scorers=[{"type": "perplexity", "name": "ppl", "model": str(model)}])
    job = load_job(data=data)
    layout = OutputLayout(tmp_path / "out")
    shards = plan_shards(job.input)
    prepare_output(layout, job, shards, overwrite=False)
    prepare_output(layout, job, shards, overwrite=False)  # same files: resumes
    (model / "model.safetensors").write_bytes(b"retrained weights")
    with pytest.raises(JobError, match=f"model files changed: {model}"):
        prepare_output(layout, job, shards, overwrite=False)
    prepare_output(layout, job, shards, overwrite=False, reselect=True)  # saved scores reused on purpose
    with pytest.raises(JobError, match="model files changed"):  # reselect kept the scores' fingerprint
        prepare_output(layout, job, shards, overwrite=False)
    prepare_output(layout, job, shards, overwrite=True)
    prepare_output(layout, job, shards, overwrite=False)  # the new files are now the recorded ones
