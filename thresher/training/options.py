"""The options of the training methods: one type per method, used by job files (`train:`) and
the Python API alike. Pydantic only (no torch), so validating a job never imports torch."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from thresher.specs import Strict

STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")
_TRAPS = {
    "upper": "ambiguous: LinUpper in fms-fsdp but a plain linear map in the GPT-2 repo; use 'linupper'",
    "mid": "use 'quadratic' (the paper's name for the code's 'mid')",
    "lin_upper": "use 'linupper'",
}


def check_strategy(name: str) -> str:
    """Return ``name`` if it is a known strategy, else raise a ValueError that explains."""
    if name in STRATEGIES:
        return name
    if name in _TRAPS:
        raise ValueError(f"strategy {name!r}: {_TRAPS[name]}")
    raise ValueError(f"strategy {name!r}: expected one of {list(STRATEGIES)}")


class ReweightConfig(Strict):
    """Online reweighting knobs (defaults: SPEC 4.3, GPT-2 repo; warm-up off).

    The one type for the Python API (``ReweightConfig(strategy="linupper", temperature=0.5)``)
    and the ``train.reweight`` section of a job; a bad value raises a ``ValueError``
    (pydantic's ``ValidationError``) naming the field.
    """

    strategy: str = Field("linupper", description="uniform, linupper, quadratic or extremes (the paper's names)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature r")
    delta: float = Field(1.0, gt=0, description="losses are min-max mapped to [-delta, delta] before the strategy")
    warmup_steps: int = Field(0, ge=0, description="steps before reweighting starts (see warmup)")
    warmup: Literal["uniform", "temperature"] = Field(
        "uniform", description="uniform: weights 1/B during warm-up; temperature: use warmup_temperature")
    warmup_temperature: float = Field(100.0, gt=0,
                                      description="the temperature during warm-up when warmup is temperature")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return check_strategy(v)


HistorySource = Literal["model", "column", "ema"]
HISTORY_SOURCES = get_args(HistorySource)
AttentionScore = Literal["prompt_sum", "prompt_sum_adjusted"]
ATTENTION_SCORES = get_args(AttentionScore)


class SSTokenConfig(Strict):
    """ssToken knobs (defaults: SPEC 3.4 and the official scripts/finetune.py; docs/sstoken.md
    compares every choice with the official code): the one type for the Python API
    (``SSTokenConfig(rho=0.5, mode="random")``) and the ``train.sstoken`` section of a job; a bad
    value raises a ``ValueError`` (pydantic's ``ValidationError``) naming the field. The random
    baseline's stream is the run's seed, given to :class:`SSToken`."""

    rho: float = Field(0.6, gt=0, le=1, description="share of each sample's response tokens that is trained on")
    gamma: float = Field(0.5, ge=0, le=1, description="weight of the excess loss against attention in the token score")
    warmup_steps: int = Field(0, ge=0, description="steps with gamma forced to 0 (attention only)")
    warmup_samples: int = Field(
        10_000, ge=0, description="samples (all ranks, in the order trained) with gamma forced to 0: the official "
                                  "code's 10000 (20% of its one 50k-sample epoch); about 20% of the samples trained "
                                  "for runs of another length; 0: no warm-up")
    attention: AttentionScore = Field(
        "prompt_sum", description="prompt_sum: head-mean last-layer attention of the token to the prompt "
                                  "(official); prompt_sum_adjusted: that share divided by n_prompt / n_keys, the "
                                  "share uniform attention would give, scaled to max 1 per sample (an ablation)")
    history: HistorySource = Field(
        "model", description="model: frozen base copy; column: hist_token_loss; ema: EMA of the trained model")
    ema_alpha: float = Field(0.99, ge=0, lt=1, description="decay of the EMA history model (history: ema)")
    mode: Literal["sstoken", "random"] = Field("sstoken", description="or 'random' (the baseline)")
