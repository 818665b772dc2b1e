"""The reference trainer: a small PyTorch loop over thresher's output shards (behind ``thresher train``).

:func:`train` runs AdamW with linear warm-up then cosine decay to 10% on a tiny GPT-2 built
from a config (tokenizer trained on the shards) or a local model folder, with the options of
a ``train:`` section (:class:`~thresher.training.spec.TrainSpec`: reweighting, ssToken,
steps, lr, batch, seed). Writes ``model.safetensors`` + config + tokenizer, ``loss_log.json``
and ``train_state.json`` to the output folder. Nothing is downloaded.

Resume: every ``checkpoint_every`` steps and at the end the run writes
``checkpoint-<step>/`` (model, tokenizer, ``trainer_state.pt``: optimizer, scheduler,
RNG, objective and data position, loss log) under a temporary name and renames it, so a
``checkpoint-*`` folder is always complete; older ones are then removed. A re-run with
the same spec, data and seed continues from the latest one; another run is refused
unless ``resume: false`` (``--overwrite``) discards it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow.parquet as pq
import torch

from thresher.common.atomic import TMP_GLOB, atomic_path
from thresher.common.device import resolve_device
from thresher.common.progress import Progress, no_library_bars
from thresher.common.schedule import warmup_cosine
from thresher.common.templates import ALPACA_TEMPLATE
from thresher.models.tiny import tiny_gpt2, train_bpe_tokenizer
from thresher.specs import JobError, config_diff
from thresher.training.data import ShardDataset, list_shards, make_loader
from thresher.training.loss import Objective
from thresher.training.spec import TrainSpec, validate_train_spec
from thresher.training.sstoken import SSToken

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"
TMP_PREFIX = ".tmp-"  # checkpoint folders being written (a killed run leaves one; the next removes it)
# spec keys that do not change what is trained (left out of the resume fingerprint)
_NOT_FINGERPRINTED = ("data", "output", "seed", "log_every", "checkpoint_every", "resume")


def gpt2_for_tokenizer(tokenizer: Any, n_layer: int = 2, n_embd: int = 128, n_head: int = 4,
                       n_positions: int = 256, seed: int = 0) -> torch.nn.Module:
    """A tiny GPT-2 (:func:`thresher.models.tiny.tiny_gpt2`) sized to ``tokenizer``, its EOS as
    bos/eos/pad, initialised from ``seed``."""
    return tiny_gpt2(len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, seed=seed)


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


def load_model(spec: TrainSpec, data: str, seed: int, tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    """The model and tokenizer named by the spec (tiny GPT-2 or a local folder).

    ``tokenizer`` (e.g. a checkpoint's) replaces the spec's or the trained one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n_pos = max(spec.block_size, spec.max_length)
    if spec.model == "tiny-gpt2":
        if tokenizer is not None:
            tok = tokenizer
        elif spec.tokenizer:
            tok = AutoTokenizer.from_pretrained(spec.tokenizer, local_files_only=True)
        else:
            tok = train_bpe_tokenizer(_shard_texts(data), spec.tiny.vocab_size)
        model = gpt2_for_tokenizer(tok, spec.tiny.n_layer, spec.tiny.n_embd, spec.tiny.n_head, n_pos, seed)
        return model, tok
    path = Path(spec.model)
    if not path.is_dir():
        raise FileNotFoundError(f"train.model: {spec.model!r} is neither 'tiny-gpt2' nor a local model folder "
                                "(models are never downloaded)")
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(spec.tokenizer or str(path),
                                                                                 local_files_only=True)
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token")
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model, tok


def train(spec: TrainSpec | dict[str, Any], data: str, output: str, seed: int = 0,
          model: torch.nn.Module | None = None, tokenizer: Any = None,
          on_checkpoint: Callable[[int], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train with ``spec`` on the shards in ``data``; checkpoints and the final model go to ``output``.

    Continues from ``output``'s latest ``checkpoint-<step>/`` when it comes from the same
    spec, data and seed (``spec.resume``, the default); raises JobError when it comes from
    another run; ``resume: false`` discards it. ``on_checkpoint(step)`` is called after each
    checkpoint is written (a hook for tests). On CPU a resumed run reproduces the
    uninterrupted one exactly (weights, loss log); on GPU up to kernel nondeterminism.
    ``progress``: on a terminal a bar over the steps (rate, ETA, the loss every ``log_every``
    steps) on stderr, else one line at the end; False: nothing (every step's loss is in
    ``loss_log.json`` either way).
    """
    if isinstance(spec, dict):
        spec = TrainSpec.model_validate(validate_train_spec(spec))
    out = Path(output)
    fingerprint = run_fingerprint(spec, data, seed)
    ckpt, state = _open_output(out, fingerprint, spec.resume)
    torch.manual_seed(seed)
    if model is None or tokenizer is None:
        ckpt_tok = None
        if ckpt is not None and tokenizer is None:  # the run's own tokenizer (not retrained)
            from transformers import AutoTokenizer

            ckpt_tok = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
        model, tokenizer = load_model(spec, data, seed, tokenizer if tokenizer is not None else ckpt_tok)
    device = resolve_device("auto")
    model.to(device).train()
    ds = ShardDataset(data, tokenizer, mode=spec.mode, max_length=spec.max_length, pack=spec.pack,
                      block_size=spec.block_size, seed=seed, prompt_template=spec.prompt_template or ALPACA_TEMPLATE,
                      use_weights=spec.use_weight_column, use_token_mask=spec.use_token_mask_column,
                      use_hist_loss=bool(spec.sstoken and spec.sstoken.history == "column"))
    # a private generator: creating a loader iterator must not draw from the global RNG (dropout)
    loader = make_loader(ds, spec.batch_size, num_workers=spec.num_workers,
                         generator=torch.Generator().manual_seed(seed))
    objective = Objective(
        reweight=spec.reweight.model_copy() if spec.reweight else None,
        sstoken=spec.sstoken.model_copy() if spec.sstoken else None, seed=seed,
        use_weight_column=spec.use_weight_column, use_token_mask_column=spec.use_token_mask_column,
    ).setup(model)  # before loading a checkpoint: ssToken's 'model' history is the start model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, spec.warmup_steps, spec.steps))
    log: list[dict[str, Any]] = []
    step, epoch, consumed, t0 = 0, 0, 0, time.time()
    resume_data: dict[str, int] | None = None
    if ckpt is not None and state is not None:
        _restore(ckpt, state, model, opt, sched, objective, device)
        step, epoch, log, resume_data = int(state["step"]), int(state["epoch"]), list(state["log"]), state["dataset"]
        print(json.dumps({"resumed_from": str(ckpt), "step": step}), flush=True)
    resumed_from = step if ckpt is not None else None
    saved_step = step if ckpt is not None else -1

    def save() -> None:
        summary = _summary(spec, data, out, seed, step, epoch, log, t0, resumed_from)
        trainer_state = {"format": 1, "fingerprint": fingerprint, "step": step, "epoch": epoch,
                         "dataset": ds.state_dict(consumed), "log": log, "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "rng": _rng_state(), "objective": _objective_state(objective)}
        save_checkpoint(out, step, model, tokenizer, trainer_state, summary)
        if on_checkpoint is not None:
            on_checkpoint(step)

    with Progress("train", spec.steps, unit="step", verb="trained", initial=step, enabled=progress) as bar:
        while step < spec.steps:
            if resume_data is not None:  # continue the checkpoint's epoch after the samples it consumed
                ds.load_state_dict(resume_data)
                consumed = int(resume_data["samples_consumed"])
                resume_data = None
            else:
                ds.set_epoch(epoch)
                consumed = 0
            fresh_epoch = consumed == 0
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
                step += 1
                bar.update(1)
                if (step - 1) % spec.log_every == 0 or step == spec.steps:
                    bar.set_note(f"loss {entry['loss']:.4f}")
                if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < spec.steps:
                    save()
                    saved_step = step
                if step >= spec.steps:
                    break
            if not got_any and fresh_epoch:
                raise ValueError(f"{data}: no training samples (empty shards, or blocks longer than the data)")
            if step < spec.steps:
                epoch += 1
    if saved_step != step:
        save()
    _publish(_checkpoint_dir(out, step), out)
    return _summary(spec, data, out, seed, step, epoch, log, t0, resumed_from)


def _summary(spec: TrainSpec, data: str, out: Path, seed: int, step: int, epoch: int, log: list[dict[str, Any]],
             t0: float, resumed_from: int | None) -> dict[str, Any]:
    return {"steps": step, "epochs_started": epoch + 1, "final_loss": log[-1]["loss"] if log else None,
            "seconds": round(time.time() - t0, 2), "output": str(out), "data": str(data), "seed": seed,
            "resumed_from": resumed_from, "spec": spec.model_dump(mode="json")}


# -- checkpoints ------------------------------------------------------------------------------

def run_fingerprint(spec: TrainSpec, data: str, seed: int) -> dict[str, Any]:
    """What makes two runs the same: the spec (less output/logging keys), the seed and the shards.

    Shards are identified by name, size and a hash of their last 64 KiB (the Parquet footer),
    not by their folder, so moved data still resumes. A local model folder is named, not hashed.
    """
    keys = {k: v for k, v in spec.model_dump(mode="json").items() if k not in _NOT_FINGERPRINTED}
    shards = []
    for f in list_shards(data):
        size = f.stat().st_size
        with f.open("rb") as fh:
            fh.seek(max(0, size - 65536))
            shards.append([f.name, size, hashlib.sha256(fh.read()).hexdigest()])
    return {"spec": keys, "seed": int(seed), "shards": shards}


def _fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diff = config_diff(old["spec"], new["spec"], "train")
    if old["seed"] != new["seed"]:
        diff.append(f"seed: {old['seed']} -> {new['seed']}")
    if old["shards"] != new["shards"]:
        diff.append("the data shards differ")
    return diff


def _checkpoint_dir(out: Path, step: int) -> Path:
    return out / f"{CHECKPOINT_PREFIX}{step:08d}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step in ``out``, or None."""
    out = Path(out)
    found = []
    for p in out.glob(f"{CHECKPOINT_PREFIX}*") if out.is_dir() else []:
        tail = p.name[len(CHECKPOINT_PREFIX):]
        if p.is_dir() and tail.isdigit() and (p / STATE_FILE).is_file():
            found.append((int(tail), p))
    return max(found)[1] if found else None


def _is_temporary(name: str) -> bool:
    """A checkpoint folder being written (``TMP_PREFIX``) or a file of `atomic_path` (``TMP_GLOB``)."""
    return name.startswith(TMP_PREFIX) or fnmatch.fnmatch(name, TMP_GLOB)


def _remove(path: Path) -> None:
    """Remove a file or folder; a folder is renamed to a temporary name first (never half there)."""
    if path.is_dir() and not _is_temporary(path.name):
        trash = path.with_name(f"{TMP_PREFIX}old-{path.name}-{os.getpid()}")
        os.rename(path, trash)
        path = trash
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _open_output(out: Path, fingerprint: dict[str, Any], resume: bool) -> tuple[Path | None, dict[str, Any] | None]:
    """Clear temporary leftovers; return the checkpoint to resume and its state (or Nones)."""
    if not out.is_dir():
        return None, None
    for p in list(out.iterdir()):  # what a killed run was writing
        if _is_temporary(p.name):
            _remove(p)
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None, None
    if not resume:
        for p in out.glob(f"{CHECKPOINT_PREFIX}*"):
            _remove(p)
        return None, None
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    diff = _fingerprint_diff(state["fingerprint"], fingerprint)
    if diff:
        raise JobError(f"{out}: holds a checkpoint ({ckpt.name}) of a different training run ({'; '.join(diff)}); "
                       "use another output folder, or start afresh with --overwrite (train.resume: false)")
    return ckpt, state


def save_checkpoint(out: Path, step: int, model: torch.nn.Module, tokenizer: Any, trainer_state: dict[str, Any],
                    summary: dict[str, Any]) -> Path:
    """Write ``out/checkpoint-<step>`` atomically (temporary folder + rename); remove older ones."""
    out.mkdir(parents=True, exist_ok=True)
    final = _checkpoint_dir(out, step)
    tmp = out / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with no_library_bars():  # no "Writing model shards" bar at every checkpoint
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(trainer_state, tmp / STATE_FILE)
    # plain writes: the folder is renamed into place only once complete
    (tmp / "loss_log.json").write_text(json.dumps({"summary": summary, "log": trainer_state["log"]}, indent=1))
    (tmp / "train_state.json").write_text(json.dumps({"step": step, "dataset": trainer_state["dataset"]}, indent=1))
    if final.exists():
        _remove(final)
    os.rename(tmp, final)
    for p in out.glob(f"{CHECKPOINT_PREFIX}*"):
        if p != final and p.is_dir():
            _remove(p)
    return final


def _publish(ckpt: Path, out: Path) -> None:
    """Make the checkpoint's model, tokenizer and logs the output folder's top-level files."""
    for f in sorted(ckpt.iterdir()):
        if f.name == STATE_FILE or not f.is_file():
            continue
        with atomic_path(out / f.name) as tmp:
            try:
                os.link(f, tmp)
            except OSError:
                shutil.copy2(f, tmp)


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": list(cuda)}


def _objective_state(objective: Objective) -> dict[str, Any]:
    """The objective's state that changes during training: the last step and an EMA history model.

    Everything else is either configuration, per-step logging (``last``, ``last_weights``,
    ``last_stats``), or rebuilt as it was (ssToken's 'model' history is the start model).
    """
    state: dict[str, Any] = {"last_step": objective._last_step}
    sst = objective.sstoken
    if isinstance(sst, SSToken) and sst.config.history == "ema" and sst.history_model is not None:
        state["ema_history"] = sst.history_model.state_dict()
    return state


def _restore(ckpt: Path, state: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LRScheduler, objective: Objective, device: torch.device) -> None:
    """Load a checkpoint's weights, optimizer, scheduler, objective and RNG states."""
    from safetensors.torch import load_model as load_safetensors

    load_safetensors(model, ckpt / "model.safetensors", strict=True, device=str(device))
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    obj = state["objective"]
    objective._last_step = obj["last_step"]
    if "ema_history" in obj:
        sst = objective.sstoken
        if not isinstance(sst, SSToken) or sst.history_model is None:
            raise ValueError(f"{ckpt}: holds an ssToken EMA history model but this run has none")
        sst.history_model.load_state_dict(obj["ema_history"])
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and len(state["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
