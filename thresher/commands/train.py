"""``thresher train JOB.yaml|OUTPUT_FOLDER``: train on a run's selected shards with the reference trainer.

The target is the job file (its ``output.path``, or ``--output`` as for ``thresher run``,
names the folder the run wrote; a relative path is taken from the current folder, as
``thresher run`` takes it) or that output folder itself (its ``_thresher/state.json`` holds
the job, so a moved folder trains where it lies). The model and its checkpoints go to
``_train/`` inside the output folder (``train.output`` sets another folder).

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

from thresher.config import JobSpec, load_job
from thresher.io.output import OutputLayout
from thresher.specs import JobError
from thresher.training.data import list_shards
from thresher.training.reweight import STRATEGIES
from thresher.training.spec import TrainSpec, validate_train_spec
from thresher.training.trainer import train


def run(job: Any, args: argparse.Namespace | None = None, root: str | Path | None = None) -> dict[str, Any]:
    """Run the ``train:`` section of a loaded JobSpec (CLI flags in ``args`` override it).

    ``root``: the output folder whose shards are trained on (default: the job's ``output.path``,
    relative to the current folder as for ``thresher run``); the model goes to ``root/_train``."""
    raw = dict(job.train or {})
    if args is not None:
        for key in ("steps", "lr", "batch_size", "seed", "data", "model", "checkpoint_every"):
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
    folder = Path(root if root is not None else job.output.path).resolve()
    data = str(Path(spec.data).resolve()) if spec.data else str(folder)
    _check_shards(data, source, "--data / train.data" if spec.data else "output.path (no train.data given)")
    output = str(Path(spec.output).resolve()) if spec.output else str(folder / "_train")
    seed = spec.seed if spec.seed is not None else job.seed
    print(f"train: shards from {data}; model and checkpoints -> {output}", file=sys.stderr)
    return train(spec, data, output, seed, progress=not getattr(args, "quiet", False))


def load_target(target: str, overrides: list[str], output: str | None = None) -> tuple[JobSpec, Path]:
    """The job and the output folder that ``thresher train TARGET`` trains from.

    ``target`` is an output folder (its ``_thresher/state.json`` holds the job; the folder is
    where it lies now) or a job file (``output`` overrides its ``output.path``, as ``--output``
    does for ``thresher run``). A thresher folder whose run has not finished is refused."""
    path = Path(target)
    if path.is_dir():
        layout = OutputLayout(path)
        if not layout.state.exists():
            raise JobError(f"{target}: not a thresher output folder (no _thresher/state.json); give the job "
                           f"file, or the folder `thresher run` wrote")
        if output:
            raise JobError(f"--output {output}: goes with a job file; {target} is the output folder itself")
        state = layout.read_state()
        if not isinstance(state.get("job"), dict):
            raise JobError(f"{layout.state}: holds no job; re-run `thresher run` on this folder")
        data = {**state["job"], "output": {**(state["job"].get("output") or {}), "path": str(layout.root)}}
        job = load_job(data=data, overrides=overrides)
        job._source = str(layout.state)
    else:
        if not path.exists():
            raise JobError(f"{target}: no such job file or output folder")
        job = load_job(target, [*overrides, *([f"output.path={output}"] if output else [])])
        layout = OutputLayout(job.output.path)  # relative to the current folder, as `thresher run` takes it
    if layout.state.exists() and not layout.manifest.exists():
        raise JobError(f"{layout.root}: the run has not finished (no _manifest.json); finish it with "
                       f"`thresher run` (or `thresher select`) first")
    return job, layout.root


def _check_shards(data: str, source: str, key: str) -> None:
    """A clear error (naming the folder and where it came from) when there is nothing to train on."""
    try:
        list_shards(data)
    except FileNotFoundError as exc:
        raise JobError(f"{source}: {key}: {exc}; run `thresher run` first, or point train.data "
                       f"(--data) at a folder of selected shards") from None


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="JOB_OR_OUTPUT",
                   help="job YAML file (its train: section), or the output folder `thresher run` wrote")
    p.add_argument("--output", "-o", help="with a job file: override output.path, as for `thresher run` "
                                          "(the folder trained on; the model goes to its _train/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job key, e.g. --set train.steps=50 (--set train.output=DIR: checkpoint folder)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="shard folder (default: train.data or the output folder)")
    p.add_argument("--model", help="'tiny-gpt2' or a local model folder")
    p.add_argument("--reweight", choices=["none", *STRATEGIES])
    p.add_argument("--sstoken", action="store_true", help="turn on ssToken with the spec's (or default) settings")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int,
                   help="resumable checkpoint every N steps (0: only at the end)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard the output folder's checkpoint and start afresh (default: resume the same run)")


def main_args(args: argparse.Namespace) -> int:
    job, root = load_target(args.target, args.overrides, args.output)
    summary = run(job, args, root)
    print(json.dumps({k: v for k, v in summary.items() if k != "spec"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``thresher train JOB.yaml|OUTPUT_FOLDER [options]`` (argv without the word ``train``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="thresher train", description=__doc__)
    _add_arguments(parser)
    return main_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
