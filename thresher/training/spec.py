"""The ``train:`` section of a job spec, validated with pydantic (unknown keys are errors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from thresher.specs import Strict as _Strict
from thresher.specs import validate_params
from thresher.training.options import ReweightConfig, SSTokenConfig


class TinyModelSpec(_Strict):
    """A GPT-2 built from a config (used when ``model`` is ``tiny-gpt2``)."""

    n_layer: int = Field(2, gt=0)
    n_embd: int = Field(128, gt=0)
    n_head: int = Field(4, gt=0)
    vocab_size: int = Field(2048, ge=260, description="size of the BPE tokenizer trained on the data")


class TrainSpec(_Strict):
    """Reference trainer settings (``thresher train JOB.yaml``)."""

    data: str | None = Field(None, description="folder of shards; default: the job's output.path")
    output: str | None = Field(None, description="checkpoint folder; default: <output.path>/_train")
    model: str = Field("tiny-gpt2", description="'tiny-gpt2' or a local model folder")
    tiny: TinyModelSpec = Field(default_factory=TinyModelSpec)
    tokenizer: str | None = Field(None, description="local tokenizer folder; default: the model's, or trained")
    mode: Literal["auto", "pretrain", "instruction"] = "auto"
    block_size: int = Field(128, ge=8)
    max_length: int = Field(256, ge=8)
    pack: bool | None = None
    prompt_template: str | None = None
    steps: int = Field(100, gt=0)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up")
    grad_clip: float = Field(1.0, ge=0)
    seed: int | None = Field(None, description="default: the job's seed")
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(200, ge=0, description="resumable checkpoint every N steps; 0: only at the end")
    resume: bool = Field(True, description="continue from the output folder's checkpoint of the same run; "
                                           "false: discard it and start afresh")
    reweight: ReweightConfig | None = None
    sstoken: SSTokenConfig | None = None
    use_weight_column: bool = True
    use_token_mask_column: bool = True

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and "{prompt}" not in v:
            raise ValueError("must contain {prompt}")
        return v


def validate_train_spec(value: Any, where: str = "train") -> dict[str, Any]:
    """Validate a ``train:`` mapping; returns it with defaults filled in.

    Raises ValueError with one ``where.key: message`` entry per problem.
    """
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    return validate_params(TrainSpec, value, where)
