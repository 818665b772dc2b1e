"""Small models built from a config, never downloaded: a byte-level BPE tokenizer trained on
the data and a GPT-2 of a few layers (the reference trainer, proxy models, benchmarks, tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EOS = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer trained on `texts` (`<|endoftext|>` as bos/eos/pad/unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)


def tiny_gpt2(vocab_size: int, *, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 256,
              eos_token_id: int | None = 0, bos_token_id: int | None = None, pad_token_id: int | None = None,
              dropout: float | None = None, seed: int | None = None, **config: Any) -> Any:
    """A GPT2LMHeadModel from a config; `seed` seeds its initialisation (None: torch's current
    stream); `dropout` sets every dropout rate (None: GPT-2's defaults)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if dropout is not None:
        config.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    if seed is not None:
        torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=eos_token_id if bos_token_id is None else bos_token_id,
                     eos_token_id=eos_token_id, pad_token_id=pad_token_id, **config)
    return GPT2LMHeadModel(cfg)
