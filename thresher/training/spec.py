"""The ``train:`` section of a job spec, validated with pydantic (unknown keys are errors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from thresher.specs import Strict as _Strict
from thresher.specs import validate_params
from thresher.training.options import ReweightConfig, SSTokenConfig


class TinyModelSpec(_Strict):
    """A GPT-2 built from a config (used when ``model`` is ``tiny-gpt2``)."""

    n_layer: int = Field(2, gt=0, description="transformer layers")
    n_embd: int = Field(128, gt=0, description="hidden size")
    n_head: int = Field(4, gt=0, description="attention heads (must divide n_embd)")
    vocab_size: int = Field(2048, ge=260, description="size of the BPE tokenizer trained on the data")


class TrainSpec(_Strict):
    """Reference trainer settings (``thresher train JOB.yaml``)."""

    data: str | None = Field(None, description="folder of shards; default: the output folder (the job's output.path)")
    output: str | None = Field(None, description="checkpoint folder; default: _train inside the output folder")
    model: str = Field("tiny-gpt2", description="'tiny-gpt2' or a local model folder")
    tiny: TinyModelSpec = Field(default_factory=TinyModelSpec,
                                description="the tiny GPT-2's shape (used when model is tiny-gpt2)")
    tokenizer: str | None = Field(None, description="local tokenizer folder; default: the model's, or trained")
    mode: Literal["auto", "pretrain", "instruction"] = Field(
        "auto", description="auto: instruction when the shards have prompt and response columns, else pretrain")
    block_size: int = Field(128, ge=8, description="tokens per packed block (pretraining)")
    max_length: int = Field(256, ge=8,
                            description="samples are cut to this many tokens when not packed (instruction data)")
    pack: bool | None = Field(None,
                              description="pack documents into blocks of block_size tokens; default: on for "
                                          "pretraining, off for instructions")
    prompt_template: str | None = Field(None,
                                        description="instruction prompt template with {prompt}; default: Alpaca's")
    steps: int = Field(100, gt=0, description="optimizer steps")
    batch_size: int = Field(8, gt=0, description="samples (or blocks) per step")
    lr: float = Field(5e-4, gt=0, description="peak AdamW learning rate (cosine decay after warm-up)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm to this; 0: no clipping")
    seed: int | None = Field(None, description="default: the job's seed")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    log_every: int = Field(10, gt=0, description="log the loss every N steps")
    checkpoint_every: int = Field(200, ge=0, description="resumable checkpoint every N steps; 0: only at the end")
    resume: bool = Field(True, description="continue from the output folder's checkpoint of the same run; "
                                           "false: discard it and start afresh")
    reweight: ReweightConfig | None = Field(None, description="online loss reweighting (see train.reweight); null: off")
    sstoken: SSTokenConfig | None = Field(None, description="ssToken token selection (see train.sstoken); null: off")
    use_weight_column: bool = Field(True, description="weight each sample by the shards' weight column when present")
    use_token_mask_column: bool = Field(True,
                                        description="use the shards' token_mask column (offline ssToken) when present")

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
