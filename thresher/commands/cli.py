"""The `thresher` command: run, score, select, inspect (and the training helpers)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

from thresher.config import JobError, JobSpec, load_job
from thresher.io.output import OutputLayout

# sub-commands implemented in other modules: name -> (module, help)
PLUGINS = {
    "train": ("thresher.commands.train", "train a model on selected shards (reweighting, ssToken)"),
    "train-proxy": ("thresher.commands.train_proxy", "train a small proxy LM on reference text"),
    "train-classifier": ("thresher.commands.train_classifier", "train a fastText quality classifier"),
    "report": ("thresher.commands.report", "HTML report with plots of an output folder"),
}


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec (YAML)")
    p.add_argument("--engine", choices=["local", "spark", "beam"], help="override engine.name")
    p.add_argument("--output", "-o", help="override output.path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any job key, e.g. --set selector.budget=0.2 (repeatable)")
    p.add_argument("--workers", type=int, help="local engine processes")
    p.add_argument("--master", help="Spark master URL (engine spark)")
    p.add_argument("--runner", help="Beam runner (engine beam)")
    p.add_argument("--overwrite", action="store_true", help="discard what the output folder holds and start afresh")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _load(args: argparse.Namespace) -> JobSpec:
    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine.name={args.engine}")
    if args.output:
        overrides.append(f"output.path={args.output}")
    if getattr(args, "workers", None):
        overrides.append(f"engine.local.workers={args.workers}")
    if getattr(args, "master", None):
        overrides.append(f"engine.spark.master={args.master}")
    if getattr(args, "runner", None):
        overrides.append(f"engine.beam.runner={args.runner}")
    return load_job(args.job, overrides)


def cmd_run(args: argparse.Namespace, score_only: bool = False) -> int:
    from thresher.pipelines.runner import run_job

    job = _load(args)
    result = run_job(job, overwrite=args.overwrite or None, progress=not args.quiet, score_only=score_only)
    print(result.summary, end="")
    print(f"output: {result.output}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """Re-run selection on saved scores with a new selector, budget or filters."""
    from thresher.pipelines.runner import run_job

    src = OutputLayout(args.path)
    if not src.state.exists():
        raise JobError(f"{args.path}: not a thresher output folder (no _thresher/state.json)")
    state = json.loads(src.state.read_text())
    overrides = list(args.overrides)
    if args.selector:
        overrides.append(f"selector={Path(args.selector).read_text()}" if Path(args.selector).is_file()
                         else f"selector={{type: {args.selector}}}")
    job = load_job(data=state["job"], overrides=overrides)
    if args.output and Path(args.output).resolve() != src.root:
        job = job.model_copy(update={"output": job.output.model_copy(update={"path": args.output})})
        _copy_scores(src, OutputLayout(args.output))
    else:
        job = job.model_copy(update={"output": job.output.model_copy(update={"path": str(src.root)})})
    if job.score_hash() != state["score_hash"]:
        raise JobError("thresher select changes only filters and the selector; scorers or input changed "
                       "(use thresher run for that)")
    result = run_job(job, progress=not args.quiet, reselect=True)
    print(result.summary, end="")
    print(f"output: {result.output}")
    return 0


def _copy_scores(src: OutputLayout, dst: OutputLayout) -> None:
    """Seed a new output folder with another run's scores (hard links where possible)."""
    if dst.root.exists() and any(dst.root.iterdir()):
        raise JobError(f"{dst.root}: output folder for `thresher select --output` must be new or empty")
    for sub in ("_scores", "_rejected"):
        s = src.root / sub
        if s.exists():
            shutil.copytree(s, dst.root / sub, copy_function=_link_or_copy)
    done = src.root / "_thresher" / "done"
    (dst.root / "_thresher" / "done").mkdir(parents=True, exist_ok=True)
    for m in done.glob("score-*.json"):
        shutil.copy2(m, dst.root / "_thresher" / "done" / m.name)
    shutil.copy2(src.state, dst.state)


def _link_or_copy(a: str, b: str) -> None:
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


def cmd_inspect(args: argparse.Namespace) -> int:
    from thresher.report.inspect import inspect_path

    print(inspect_path(args.path, as_json=args.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thresher", description="Select and weight LLM training data.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a job: score, select, write shards")
    _job_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("score", help="run only the scoring stage (scores saved for `thresher select`)")
    _job_args(p)
    p.set_defaults(func=lambda a: cmd_run(a, score_only=True))
    p = sub.add_parser("select", help="re-select on saved scores with a new selector/budget/filters")
    p.add_argument("path", help="output folder of an earlier run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set selector.budget=0.2 or --set selector.type=random")
    p.add_argument("--selector", help="selector type, or a YAML file holding a selector mapping")
    p.add_argument("--output", "-o", help="write the new selection to another folder (scores are linked)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_select)
    p = sub.add_parser("inspect", help="schema, counts and score summary of an output folder or Parquet file")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
    for name, (_, help_text) in PLUGINS.items():  # listed in --help; `main` dispatches them
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _plugin(module: str, name: str, argv: list[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise JobError(f"`thresher {name}` is not available: {exc}") from None
    return int(mod.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PLUGINS:  # plugins parse their own options
            return _plugin(PLUGINS[argv[0]][0], argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except JobError as exc:
        print(f"thresher: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thresher: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
