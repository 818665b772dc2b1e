"""``thresher train JOB.yaml``: train on a job's selected shards with the reference trainer.

The loop, its outputs and its resume rules are described in :mod:`thresher.training.trainer`:
AdamW with warm-up and cosine decay on a tiny GPT-2 built from a config or a local model folder,
with the job's ``train:`` options (reweighting, ssToken, steps, lr, batch, seed); a re-run with
the same spec, data and seed continues from the latest checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from thresher.config import load_job
from thresher.specs import JobError
from thresher.training.data import list_shards
from thresher.training.reweight import STRATEGIES
from thresher.training.spec import TrainSpec, validate_train_spec
from thresher.training.trainer import train


def run(job: Any, args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Run the ``train:`` section of a loaded JobSpec (CLI flags in ``args`` override it)."""
    raw = dict(job.train or {})
    if args is not None:
        for key in ("steps", "lr", "batch_size", "seed", "data", "output", "model", "checkpoint_every"):
            val = getattr(args, key, None)
            if val is not None:
                raw[key] = val
        if getattr(args, "reweight", None):
            raw["reweight"] = None if args.reweight == "none" else {**(raw.get("reweight") or {}),
                                                                    "strategy": args.reweight}
        if getattr(args, "sstoken", False):
            raw["sstoken"] = raw.get("sstoken") or {}
        if getattr(args, "overwrite", False):
            raw["resume"] = False
    source = getattr(job, "source", "<job>")
    try:
        spec = TrainSpec.model_validate(validate_train_spec(raw, "train"))
    except ValueError as exc:  # a bad train: key or CLI flag
        raise JobError(f"{source}: {' '.join(str(exc).split())}") from None
    data = spec.data or job.output.path
    _check_shards(data, source, "--data / train.data" if spec.data else "output.path (no train.data given)")
    output = spec.output or str(Path(job.output.path) / "_train")
    seed = spec.seed if spec.seed is not None else job.seed
    return train(spec, data, output, seed)


def _check_shards(data: str, source: str, key: str) -> None:
    """A clear error (naming the folder and where it came from) when there is nothing to train on."""
    try:
        list_shards(data)
    except FileNotFoundError as exc:
        raise JobError(f"{source}: {key}: {exc}; run `thresher run` first, or point train.data "
                       f"(--data) at a folder of selected shards") from None


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
    p.add_argument("--reweight", choices=["none", *STRATEGIES])
    p.add_argument("--sstoken", action="store_true", help="turn on ssToken with the spec's (or default) settings")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int,
                   help="resumable checkpoint every N steps (0: only at the end)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard the output folder's checkpoint and start afresh (default: resume the same run)")


def main_args(args: argparse.Namespace) -> int:
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
