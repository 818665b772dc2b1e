"""Train a small GPT-2-style proxy LM on a trusted reference text set.

The result is a plain Hugging Face folder (model + tokenizer) that the `perplexity` scorer
loads with `model: <folder>`: documents like the reference set get low perplexity. By default
a byte-level BPE tokenizer is trained on the reference texts; `tokenizer` reuses an existing
one (a folder or a model reference such as `smollm2`). Documents are joined with the eos token
and cut into blocks of `context` tokens; a seeded held-out share of the blocks gives the
validation loss written to `training_info.json`. Runs on CPU or GPU (`device`).

    thresher train-proxy --input reference.jsonl --output proxy/ --steps 500
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from thresher.commands._textio import read_texts
from thresher.commands._util import run_command
from thresher.common.device import resolve_device
from thresher.common.progress import Progress, Report, no_library_bars, no_report
from thresher.common.schedule import warmup_cosine
from thresher.common.threads import apply_torch_threads
from thresher.models.loading import resolve_model_ref
from thresher.models.tiny import tiny_gpt2, train_bpe_tokenizer


def _blocks(tokenizer: Any, texts: Sequence[str], context: int, report: Report = no_report) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer needs an eos token to separate documents")
    ids: list[int] = []
    for start in range(0, len(texts), 512):
        enc = tokenizer(list(texts[start:start + 512]), add_special_tokens=False, verbose=False)["input_ids"]
        for doc in enc:
            ids.extend(doc)
            ids.append(eos)
        report(len(enc))
    n = len(ids) // context
    if n < 2:
        raise ValueError(f"reference set too small: {len(ids)} tokens make fewer than 2 blocks of {context}")
    return torch.tensor(np.asarray(ids[: n * context], dtype=np.int64)).view(n, context)


def train_proxy(inputs: Sequence[str], output: str, *, text_field: str = "text", tokenizer: str | None = None,
                vocab_size: int = 8192, n_layer: int = 4, n_embd: int = 256, n_head: int = 4, context: int = 256,
                steps: int = 500, batch_size: int = 16, lr: float = 1e-3, warmup: int = 50, weight_decay: float = 0.01,
                valid_fraction: float = 0.05, max_docs: int | None = None, seed: int = 0, device: str = "auto",
                torch_threads: int | None = None, file_per_doc: bool = False, log_every: int = 50,
                progress: bool = True) -> dict[str, Any]:
    """Train and save the proxy; returns training info (also saved as training_info.json).

    ``progress``: on a terminal, bars on stderr for the tokenizer, tokenising and the steps
    (rate, ETA, loss every ``log_every`` steps); else one line per phase; False: nothing."""
    from transformers import AutoTokenizer

    apply_torch_threads(torch_threads)
    torch.manual_seed(seed)
    texts = read_texts(inputs, text_field, limit=max_docs, file_per_doc=file_per_doc)
    if not texts:
        raise ValueError(f"no documents found in {list(inputs)}")
    if tokenizer:
        tok = AutoTokenizer.from_pretrained(str(resolve_model_ref(tokenizer)), local_files_only=True)
        if tok.pad_token_id is None and tok.eos_token_id is not None:
            tok.pad_token = tok.eos_token
    else:
        with Progress("tokenizer", len(texts), unit="doc", enabled=progress) as bar:
            tok = train_bpe_tokenizer(texts, vocab_size)
            bar.update(len(texts))
    with Progress("tokenize", len(texts), unit="doc", enabled=progress) as bar:
        blocks = _blocks(tok, texts, context, bar.reporter("all"))
        bar.finish("all", len(texts))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, int(len(blocks) * valid_fraction))
    valid, train = blocks[order[:n_valid]], blocks[order[n_valid:]]
    dev = resolve_device(device)
    model = tiny_gpt2(len(tok), n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=context,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      pad_token_id=tok.pad_token_id).to(dev)  # initialised from the seed set above
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))

    rng = random.Random(seed)
    log: list[dict[str, float]] = []
    start = time.perf_counter()
    model.train()
    bar = Progress("train-proxy", steps, unit="step", verb="trained", enabled=progress)
    for step in range(steps):
        idx = torch.tensor([rng.randrange(len(train)) for _ in range(batch_size)])
        batch = train[idx].to(dev)
        for group in opt.param_groups:
            group["lr"] = lr * warmup_cosine(step, warmup, steps)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.update(1)
        if step % log_every == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(float(loss.detach()), 4)})
            bar.set_note(f"loss {log[-1]['loss']:.4f}")
    bar.close()
    model.eval()
    with torch.inference_mode():
        losses = [float(model(input_ids=valid[i:i + batch_size].to(dev), labels=valid[i:i + batch_size].to(dev)).loss)
                  for i in range(0, len(valid), batch_size)]
    valid_loss = float(np.mean(losses))
    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with no_library_bars():
        model.to("cpu").save_pretrained(out)
    tok.save_pretrained(out)
    info = {"documents": len(texts), "train_blocks": len(train), "valid_blocks": len(valid), "context": context,
            "tokens_seen": steps * batch_size * context, "steps": steps, "valid_loss": round(valid_loss, 4),
            "valid_ppl": round(math.exp(min(valid_loss, 700)), 3), "seconds": round(time.perf_counter() - start, 2),
            "config": {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "vocab_size": len(tok)},
            "seed": seed, "log": log}
    (out / "training_info.json").write_text(json.dumps(info, indent=2))
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of `thresher train-proxy`."""
    parser.add_argument("--input", nargs="+", required=True, help="reference texts: JSONL, Parquet, txt, or folders")
    parser.add_argument("--output", "-o", required=True, help="folder for the HF model")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--tokenizer", default=None, help="reuse a tokenizer (folder or model ref) instead of training one")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--max-docs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--file-per-doc", action="store_true", help="each .txt file is one document")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run from parsed arguments; prints the training info as JSON (without the loss log)."""
    info = train_proxy(args.input, args.output, text_field=args.text_field, tokenizer=args.tokenizer,
                       vocab_size=args.vocab_size, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                       context=args.context, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       warmup=args.warmup, valid_fraction=args.valid_fraction, max_docs=args.max_docs, seed=args.seed,
                       device=args.device, torch_threads=args.torch_threads, file_per_doc=args.file_per_doc,
                       progress=not args.quiet)
    print(json.dumps({k: v for k, v in info.items() if k != "log"}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`thresher train-proxy ...`"""
    return run_command("thresher train-proxy", __doc__, add_arguments, run, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
