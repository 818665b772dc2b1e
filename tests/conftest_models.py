"""Tiny models built from configs, with tokenizers trained on the fly (helpers for model tests).

Plain functions (not fixtures): tests call them with a tmp folder. Everything runs offline in
well under a second per model.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Data selection chooses the documents a language model learns from.",
    "Perplexity measures how surprised a model is by a text.",
    "Shares rose sharply after the company reported record profits.",
    "The match ended in a draw after extra time in the final.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The government announced new rules for energy prices this winter.",
    "Je pense donc je suis, dit le philosophe.",
    "Numbers like 12345 and symbols like #!? appear in web text too.",
] * 3


def sample_texts(n: int = 40, seed: int = 0) -> list[str]:
    """Sentences of varied length built from the corpus words (deterministic)."""
    import random

    rng = random.Random(seed)
    words = " ".join(CORPUS).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def train_tokenizer(folder: Path, style: str = "gpt2", vocab_size: int = 300):
    """A byte-level BPE tokenizer saved to `folder`.

    style `gpt2`: eos/bos `<|endoftext|>`, no pad token (like GPT-2);
    style `llama`: `<s>` BOS added to every encoding, `</s>` eos, no pad;
    style `bert`: `[CLS] ... [SEP]` around every encoding, `[PAD]` pad;
    style `bare`: no special tokens at all (no pad, no eos).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"gpt2": ["<|endoftext|>"], "llama": ["<s>", "</s>", "<unk>"],
                "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "bare": []}[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    kwargs: dict[str, str] = {}
    if style == "gpt2":
        kwargs = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    elif style == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        kwargs = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    elif style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                     ("[SEP]", tok.token_to_id("[SEP]"))])
        kwargs = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def tiny_gpt2(folder: Path, tokenizer_style: str = "gpt2", n_positions: int = 512, seed: int = 0) -> Path:
    """A 2-layer GPT-2 LM (hidden 64) saved with its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = train_tokenizer(folder, tokenizer_style)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=64, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama LM (hidden 64) whose tokenizer adds a BOS token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(folder, "llama")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def tiny_bert(folder: Path, num_labels: int = 3, problem_type: str | None = None, seed: int = 0,
              head: str = "classifier") -> Path:
    """A 2-layer BERT (hidden 64): `classifier` head (labels neg/neutral/pos...) or `base` model."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tok = train_tokenizer(folder, "bert")
    torch.manual_seed(seed)
    labels = ["neg", "neutral", "pos", "other"][:num_labels] if num_labels > 1 else ["score"]
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                     num_labels=num_labels, id2label=dict(enumerate(labels)),
                     label2id={k: i for i, k in enumerate(labels)}, problem_type=problem_type)
    model = BertForSequenceClassification(cfg) if head == "classifier" else BertModel(cfg)
    model.save_pretrained(folder)
    return folder


def tiny_gpt2_classifier(folder: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """A 2-layer GPT-2 sequence classifier whose tokenizer has no pad token."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = train_tokenizer(folder, "gpt2")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=64, n_layer=2, n_head=2, num_labels=num_labels,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(cfg).save_pretrained(folder)
    return folder
