"""CPU bf16 autocast from the hardware: detection, `auto | true | false`, and what a scorer runs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from conftest_models import sample_texts, tiny_bert
from thresher.common import device as dev
from thresher.common.device import (CPU_BF16_ENV, DeviceError, cpu_has_native_bf16, native_bf16_from_cpuinfo,
                                    resolve_cpu_bf16_autocast)
from thresher.models.loading import autocast_context, resolve_dtype
from thresher.scorers.registry import build_scorer

X86_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2
bugs\t\t: sysret_ss_attrs spectre_v1
"""
X86_AVX512_NO_BF16 = X86_AVX2.replace("avx2 bmi2", "avx2 bmi2 avx512f avx512bw avx512_vnni avx512_fp16")
X86_AVX512_BF16 = X86_AVX2.replace("avx2 bmi2", "avx2 bmi2 avx512f avx512bw avx512_bf16")
X86_AMX = X86_AVX2.replace("avx2 bmi2", "avx2 bmi2 amx_bf16 amx_tile amx_int8")
ARM_BF16 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm bf16 i8mm
CPU implementer\t: 0x41
"""
ARM_NO_BF16 = ARM_BF16.replace(" bf16 i8mm", "")


@pytest.mark.parametrize("text, expected", [
    (X86_AVX2, False), (X86_AVX512_NO_BF16, False), (X86_AVX512_BF16, True), (X86_AMX, True),
    (ARM_BF16, True), (ARM_NO_BF16, False), ("", False), ("model name : bf16 avx512_bf16 in a name\n", False),
])
def test_native_bf16_from_cpuinfo(text: str, expected: bool) -> None:
    assert native_bf16_from_cpuinfo(text) is expected


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    return monkeypatch


def test_env_override_wins(no_env: pytest.MonkeyPatch) -> None:
    for value, expected in (("1", True), ("true", True), ("0", False), ("off", False)):
        no_env.setenv(CPU_BF16_ENV, value)
        assert cpu_has_native_bf16() is expected


def test_checked_once_per_process(no_env: pytest.MonkeyPatch) -> None:
    """The cpuinfo result is cached: a changed answer after the first call is not seen."""
    no_env.setattr(dev, "_NATIVE_BF16", None)
    first = cpu_has_native_bf16()
    assert dev._NATIVE_BF16 is first
    no_env.setattr(dev, "native_bf16_from_cpuinfo", lambda text: not first)
    assert cpu_has_native_bf16() is first
    no_env.setattr(dev, "_NATIVE_BF16", True)
    assert cpu_has_native_bf16() is True


def test_auto_resolves_per_the_flag(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv(CPU_BF16_ENV, "0")
    assert resolve_cpu_bf16_autocast("auto") is False and resolve_cpu_bf16_autocast(None) is False
    assert resolve_cpu_bf16_autocast(True) is True  # an explicit setting is never second-guessed
    no_env.setenv(CPU_BF16_ENV, "1")
    assert resolve_cpu_bf16_autocast("auto") is True
    assert resolve_cpu_bf16_autocast(False) is False
    with pytest.raises(DeviceError, match="cpu_bf16_autocast"):
        resolve_cpu_bf16_autocast("sometimes")


def test_autocast_context_takes_the_resolved_bool() -> None:
    cpu = torch.device("cpu")
    assert isinstance(autocast_context(cpu, False), contextlib.nullcontext)
    assert isinstance(autocast_context(cpu, True), torch.autocast)
    assert isinstance(autocast_context(torch.device("cuda", 0), True), contextlib.nullcontext)
    with pytest.raises(TypeError, match="resolved bool"):
        autocast_context(cpu, "auto")  # type: ignore[arg-type]


def test_defaults_and_values() -> None:
    from thresher.scorers.classifier import ClassifierParams
    from thresher.scorers.embedding import EmbeddingParams
    from thresher.scorers.perplexity import PerplexityParams

    assert EmbeddingParams().cpu_bf16_autocast == "auto"
    # scores that get thresholded keep fp32 logits unless the job asks
    assert PerplexityParams().cpu_bf16_autocast is False
    assert ClassifierParams(model="x").cpu_bf16_autocast is False
    assert EmbeddingParams(cpu_bf16_autocast=True).cpu_bf16_autocast is True
    assert PerplexityParams(cpu_bf16_autocast="auto").cpu_bf16_autocast == "auto"
    with pytest.raises(ValueError):
        EmbeddingParams(cpu_bf16_autocast="maybe")


def test_gpu_dtype_auto_asks_torch_for_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) is torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32  # CPU weights stay fp32


@pytest.mark.parametrize("flag, expect_autocast", [("0", False), ("1", True)])
def test_scorer_with_auto_follows_the_cpu(no_env: pytest.MonkeyPatch, tmp_path: Path, flag: str,
                                          expect_autocast: bool) -> None:
    """`auto` on a CPU "without" native bf16 runs fp32: the forward's context is a nullcontext."""
    import thresher.scorers.embedding as emb

    no_env.setenv(CPU_BF16_ENV, flag)
    seen: list[object] = []
    real = emb.autocast_context

    def spy(device: torch.device, on: bool) -> object:
        ctx = real(device, on)
        seen.append(ctx)
        return ctx

    no_env.setattr(emb, "autocast_context", spy)
    folder = tiny_bert(tmp_path / "enc", head="base")
    scorer = build_scorer({"type": "embedding", "model": str(folder), "device": "cpu"})
    assert scorer.params.cpu_bf16_autocast == "auto"
    texts = sample_texts(6, seed=3)
    out = scorer(pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": texts}))
    assert out["embedding_vector"].null_count == 0
    assert seen, "the scorer never asked for an autocast context"
    kind = torch.autocast if expect_autocast else contextlib.nullcontext
    assert all(isinstance(c, kind) for c in seen), seen
