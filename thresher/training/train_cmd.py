"""``thresher train JOB.yaml``: a small reference trainer over thresher's output shards.

A plain PyTorch loop (AdamW, linear warm-up then cosine decay to 10%) on a tiny GPT-2
built from a config (tokenizer trained on the shards) or a local model folder, with the
options of the ``train:`` section (reweighting, ssToken, steps, lr, batch, seed). Writes
``model.safetensors`` + config + tokenizer, ``loss_log.json`` and ``train_state.json``
to the output folder. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow.parquet as pq
import torch

from thresher.training.data import ALPACA_TEMPLATE, ShardDataset, list_shards, make_loader
from thresher.training.loss import Objective
from thresher.training.reweight import ReweightConfig
from thresher.training.spec import TrainSpec, validate_train_spec
from thresher.training.sstoken import SSTokenConfig

EOS = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (EOS/pad = ``<|endoftext|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token=EOS)


def tiny_gpt2(tokenizer: Any, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 256,
              seed: int = 0) -> torch.nn.Module:
    """A GPT-2 from a config (no download), seeded initialisation."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(cfg)


def _shard_texts(data: str, limit: int = 20_000) -> Iterable[str]:
    n = 0
    for f in list_shards(data):
        table = pq.read_table(f)
        cols = [c for c in ("text", "prompt", "response") if c in table.column_names]
        for row in table.select(cols).to_pylist():
            for c in cols:
                if row[c]:
                    yield row[c]
            n += 1
            if n >= limit:
                return


def load_model(spec: TrainSpec, data: str, seed: int) -> tuple[torch.nn.Module, Any]:
    """The model and tokenizer named by the spec (tiny GPT-2 or a local folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n_pos = max(spec.block_size, spec.max_length)
    if spec.model == "tiny-gpt2":
        if spec.tokenizer:
            tok = AutoTokenizer.from_pretrained(spec.tokenizer, local_files_only=True)
        else:
            tok = train_bpe_tokenizer(_shard_texts(data), spec.tiny.vocab_size)
        model = tiny_gpt2(tok, spec.tiny.n_layer, spec.tiny.n_embd, spec.tiny.n_head, n_pos, seed)
        return model, tok
    path = Path(spec.model)
    if not path.is_dir():
        raise FileNotFoundError(f"train.model: {spec.model!r} is neither 'tiny-gpt2' nor a local model folder "
                                "(models are never downloaded)")
    tok = AutoTokenizer.from_pretrained(spec.tokenizer or str(path), local_files_only=True)
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token")
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model, tok


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(spec: TrainSpec | dict[str, Any], data: str, output: str, seed: int = 0,
          model: torch.nn.Module | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train with ``spec`` on the shards in ``data``; write a checkpoint to ``output``."""
    if isinstance(spec, dict):
        spec = TrainSpec.model_validate(validate_train_spec(spec))
    torch.manual_seed(seed)
    if model is None or tokenizer is None:
        model, tokenizer = load_model(spec, data, seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    ds = ShardDataset(data, tokenizer, mode=spec.mode, max_length=spec.max_length, pack=spec.pack,
                      block_size=spec.block_size, seed=seed, prompt_template=spec.prompt_template or ALPACA_TEMPLATE,
                      use_weights=spec.use_weight_column, use_token_mask=spec.use_token_mask_column,
                      use_hist_loss=bool(spec.sstoken and spec.sstoken.history == "column"))
    loader = make_loader(ds, spec.batch_size, num_workers=spec.num_workers)
    objective = Objective(
        reweight=ReweightConfig(**spec.reweight.model_dump()) if spec.reweight else None,
        sstoken=SSTokenConfig(**spec.sstoken.model_dump(), seed=seed) if spec.sstoken else None,
        use_weight_column=spec.use_weight_column, use_token_mask_column=spec.use_token_mask_column,
    ).setup(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spec.warmup_steps, spec.steps))
    log: list[dict[str, Any]] = []
    step, epoch, consumed, t0 = 0, 0, 0, time.time()
    while step < spec.steps:
        ds.set_epoch(epoch)
        consumed = 0
        got_any = False
        for batch in loader:
            got_any = True
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, _ = objective(model, batch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            opt.step()
            sched.step()
            consumed += batch["input_ids"].shape[0]
            entry = {"step": step, "epoch": epoch, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0],
                     **objective.last}
            log.append(entry)
            if step % spec.log_every == 0 or step == spec.steps - 1:
                print(json.dumps(entry), flush=True)
            step += 1
            if step >= spec.steps:
                break
        if not got_any:
            raise ValueError(f"{data}: no training samples (empty shards, or blocks longer than the data)")
        if step < spec.steps:
            epoch += 1
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary = {"steps": step, "epochs_started": epoch + 1, "final_loss": log[-1]["loss"] if log else None,
               "seconds": round(time.time() - t0, 2), "output": str(out), "data": str(data), "seed": seed,
               "spec": spec.model_dump(mode="json")}
    _write_json(out / "loss_log.json", {"summary": summary, "log": log})
    _write_json(out / "train_state.json", {"step": step, "dataset": ds.state_dict(consumed)})
    return summary


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# -- CLI --------------------------------------------------------------------------------------

def run(job: Any, args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Run the ``train:`` section of a loaded JobSpec (CLI flags in ``args`` override it)."""
    raw = dict(job.train or {})
    if args is not None:
        for key in ("steps", "lr", "batch_size", "seed", "data", "output", "model"):
            val = getattr(args, key, None)
            if val is not None:
                raw[key] = val
        if getattr(args, "reweight", None):
            raw["reweight"] = None if args.reweight == "none" else {**(raw.get("reweight") or {}),
                                                                    "strategy": args.reweight}
        if getattr(args, "sstoken", False):
            raw["sstoken"] = raw.get("sstoken") or {}
    spec = TrainSpec.model_validate(validate_train_spec(raw, "train"))
    data = spec.data or job.output.path
    output = spec.output or str(Path(job.output.path) / "_train")
    seed = spec.seed if spec.seed is not None else job.seed
    return train(spec, data, output, seed)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job YAML file (its train: section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job key, e.g. --set train.steps=50")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="shard folder (default: train.data or output.path)")
    p.add_argument("--output", help="checkpoint folder (default: <output.path>/_train)")
    p.add_argument("--model", help="'tiny-gpt2' or a local model folder")
    p.add_argument("--reweight", choices=["none", "uniform", "linupper", "quadratic", "extremes"])
    p.add_argument("--sstoken", action="store_true", help="turn on ssToken with the spec's (or default) settings")


def main_args(args: argparse.Namespace) -> int:
    from thresher.config import load_job

    job = load_job(args.job, args.overrides)
    summary = run(job, args)
    print(json.dumps({k: v for k, v in summary.items() if k != "spec"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``thresher train JOB.yaml [options]`` (argv without the word ``train``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="thresher train", description=__doc__)
    _add_arguments(parser)
    return main_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
