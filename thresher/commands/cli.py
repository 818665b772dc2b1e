"""The `thresher` command: run, score, dedup, config, select, inspect (and the training helpers)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thresher.common.atomic import atomic_path
from thresher.config import JobError, JobSpec, job_identity, load_job, safe_load_yaml
from thresher.io import storage
from thresher.io.output import JobLock, OutputLayout, check_storage_path
from thresher.selectors.registry import SELECTORS, selector_class
from thresher.specs import config_diff
from thresher.version import __version__

# sub-commands implemented in other modules: name -> (module, help)
PLUGINS = {
    "train": ("thresher.commands.train", "train a model on selected shards (reweighting, ssToken)"),
    "train-proxy": ("thresher.commands.train_proxy", "train a small proxy LM on reference text"),
    "train-classifier": ("thresher.commands.train_classifier", "train a fastText quality classifier"),
    "report": ("thresher.commands.report", "HTML report with plots of an output folder"),
}


SET_HELP = ("override any job key, e.g. --set selector.budget=0.2 (repeatable); quote a key that holds "
            "dots: --set 'engine.spark.conf.\"spark.executor.memory\"=4g'")


def _spec_args(p: argparse.ArgumentParser) -> None:
    """The options that make the job: the file and its overrides (run, score, config)."""
    p.add_argument("job", help="job spec (YAML)")
    p.add_argument("--engine", choices=["local", "spark", "beam"], help="override engine.name")
    p.add_argument("--output", "-o", help="override output.path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--workers", type=int, help="local engine processes")
    p.add_argument("--master", help="Spark master URL (engine spark)")
    p.add_argument("--runner", help="Beam runner (engine beam)")


def _job_args(p: argparse.ArgumentParser) -> None:
    _spec_args(p)
    p.add_argument("--overwrite", action="store_true", help="discard what the output folder holds and start afresh")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved job and check it (as `thresher config`); run nothing")


def _load(args: argparse.Namespace) -> JobSpec:
    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine.name={args.engine}")
    if args.output:
        overrides.append(f"output.path={args.output}")
    if getattr(args, "workers", None) is not None:  # --workers 0 is an error, not "unset"
        overrides.append(f"engine.local.workers={args.workers}")
    if getattr(args, "master", None):
        overrides.append(f"engine.spark.master={args.master}")
    if getattr(args, "runner", None):
        overrides.append(f"engine.beam.runner={args.runner}")
    return load_job(args.job, overrides)


def cmd_run(args: argparse.Namespace, score_only: bool = False) -> int:
    from thresher.pipelines.runner import run_job

    if getattr(args, "dry_run", False):
        return cmd_config(args)
    job = _load(args)
    try:
        with _sigterm_stops_run():
            result = run_job(job, overwrite=args.overwrite or None, progress=not args.quiet, score_only=score_only)
    except Terminated:
        return _terminated()
    print(result.summary, end="")
    print(f"output: {result.output}")
    return 0


def dedup_only(job: JobSpec) -> JobSpec:
    """`job` as a dedup-only run: its `dedup:` section (an error without one), its input and
    scorers, no filters and `selector: {type: all}` (every row not removed is selected)."""
    if job.dedup is None:
        raise JobError(f"{job.source}: no `dedup:` section; `thresher dedup` runs a job's dedup section "
                       f"(add one, e.g. `dedup: {{exact: true, minhash: {{threshold: 0.8}}}}`)")
    data = job.model_dump(mode="json")
    data["selector"], data["filters"] = {"type": "all"}, []
    dedup_job = JobSpec.model_validate(data)
    dedup_job._source = job._source
    return dedup_job


def dedup_line(manifest: dict[str, Any]) -> str:
    """The dedup stage in one line: clusters, removed rows by reason, ignored duplicate ids."""
    d = manifest["dedup"]
    removed = d["removed"]
    return (f"dedup: {d['rows']:,} rows, {d['clusters']:,} clusters; removed {sum(removed.values()):,} "
            f"({removed['exact_duplicate']:,} exact_duplicate, {removed['near_duplicate']:,} near_duplicate); "
            f"{d.get('duplicate_ids', 0):,} duplicate ids left out; {d['seconds']:.2f}s"
            f"{' (resumed)' if manifest['resumed_shards'].get('dedup') else ''}")


def cmd_dedup(args: argparse.Namespace) -> int:
    """Run a job's `dedup:` section alone (`dedup_only`): score, dedup, select all, write."""
    from thresher.pipelines.runner import run_job

    job = dedup_only(_load(args))
    try:
        with _sigterm_stops_run():
            result = run_job(job, overwrite=args.overwrite or None, progress=not args.quiet)
    except Terminated:
        return _terminated()
    print(result.summary, end="")
    print(dedup_line(result.manifest))
    print(f"output: {result.output}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the fully resolved job (every default filled in) as YAML, after the plan-time checks
    (`check_plan`: columns, types, paths, devices); the output folder is not touched."""
    import yaml

    from thresher.pipelines.plan import check_plan

    job = _load(args)
    check_plan(job)
    text = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)
    print(f"# {job.source}, resolved (every default filled in); plan checks passed\n{text}", end="")
    return 0


class Terminated(BaseException):
    """SIGTERM arrived during a run: it unwinds like Ctrl-C (the engine kills its workers,
    the lock is released), and the command exits with 143."""


@contextlib.contextmanager
def _sigterm_stops_run() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread (a second one kills at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Terminated()

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _terminated() -> int:
    print("thresher: terminated (SIGTERM); re-run the same command to resume", file=sys.stderr)
    return 128 + signal.SIGTERM


def cmd_select(args: argparse.Namespace) -> int:
    """Re-run selection on saved scores with a new selector, budget or filters."""
    from thresher.pipelines.plan import check_plan
    from thresher.pipelines.runner import run_job

    src = OutputLayout(args.path)
    if not src.state.exists():
        raise JobError(f"{args.path}: not a thresher output folder (no _thresher/state.json)")
    state = src.read_state()
    data = dict(state["job"])
    if args.selector:  # first the new selector, then --set (so `--set selector.budget=...` holds)
        data["selector"] = _new_selector(args.selector, data.get("selector") or {})
    job = load_job(data=data, overrides=list(args.overrides))
    if job.score_hash() != state["score_hash"]:
        raise JobError("thresher select changes only filters and the selector; scorers or input changed "
                       "(use thresher run for that)")
    at_src = job.model_copy(update={"output": job.output.model_copy(update={"path": str(src.root)})})
    check_plan(at_src, reselect=True)  # before another folder is seeded with the scores
    dst = (storage.normalize(args.output) if storage.is_remote(args.output) else Path(args.output).resolve()
           ) if args.output else None
    in_place = dst is None or str(dst) == str(src.root)
    if not in_place:
        check_storage_path(args.output, "--output")
    print(_reselect_line(src.root, None if in_place else dst,
                         config_diff(job_identity(state["job"]), job.identity())), file=sys.stderr)
    try:
        with _sigterm_stops_run():
            if not in_place:
                job = job.model_copy(update={"output": job.output.model_copy(update={"path": args.output})})
                _copy_scores(src, OutputLayout(args.output))
            else:
                job = job.model_copy(update={"output": job.output.model_copy(update={"path": str(src.root)})})
            result = run_job(job, overwrite=False, progress=not args.quiet, reselect=True)  # never re-score
    except Terminated:
        return _terminated()
    print(result.summary, end="")
    print(f"output: {result.output}")
    return 0


def _reselect_line(src: Path, dst: Path | None, changes: list[str]) -> str:
    """What `thresher select` is about to do, in one line: which selection it replaces (in
    place) or where it writes the new one, and the keys that change."""
    what = f" ({'; '.join(changes)})" if changes else ""
    if dst is not None:
        return f"re-selecting into {dst}: scores linked from {src}{what or ' (same filters and selector)'}"
    if not changes:
        return f"re-selecting in place: the selection of {src} is unchanged (same filters and selector)"
    return f"re-selecting in place: replaces the selection of {src}{what}"


CARRIED_SELECTOR_KEYS = ("budget", "budget_unit", "token_column")


def _new_selector(arg: str, old: dict[str, Any]) -> dict[str, Any]:
    """The selector `--selector` names: a type, or a YAML file holding a selector mapping. The
    earlier selector's budget (and budget_unit, token_column) carries over when the new
    selector has such a key and does not set it."""
    if Path(arg).is_file():
        new = safe_load_yaml(Path(arg).read_text(encoding="utf-8"), arg)
        if not isinstance(new, dict) or "type" not in new:
            raise JobError(f"--selector {arg}: the file must hold a selector mapping (type: ..., budget: ...)")
    else:
        new = {"type": arg}
    if new["type"] not in SELECTORS:
        return new  # the job's validation names the known types
    fields = selector_class(new["type"]).Params.model_fields
    return {**{k: old[k] for k in CARRIED_SELECTOR_KEYS if k in old and k in fields}, **new}


def _copy_scores(src: OutputLayout, dst: OutputLayout) -> None:
    """Seed another output folder with `src`'s scores (hard links where possible), resumably.

    Order: `_thresher/state.json` first (from then on `dst` is thresher's own and names the
    scores it holds), then per shard its score and rejected parts, then its score marker,
    which vouches for them; each through a temporary name and a rename. A re-run of the same
    command (after a kill) recognises its partial copy by the state (same scores, same
    inputs) and copies only the shards without a marker; `thresher select DST` works on it
    too (it re-scores what was not copied)."""
    src_state = src.read_state()
    if dst.state.exists():
        old = dst.read_state()
        if any(old.get(k) != src_state.get(k) for k in ("score_hash", "inputs_hash")):
            raise JobError(f"{dst.root}: holds another job's scores; the output folder for `thresher select "
                           f"--output` must be new, empty, or a copy of the scores of {src.root}")
    with JobLock(dst):  # refuses a folder that is neither thresher's own nor new/empty, creating nothing
        if not dst.state.exists():
            with atomic_path(dst.state) as tmp:
                _copy_file(src.state, tmp, link=False)
        for marker in sorted(src.marker("score", 0).parent.glob("score-*.json")):
            i = int(marker.stem.split("-", 1)[1])
            if dst.marker("score", i).exists():
                continue
            for a, b in ((src.scores(i), dst.scores(i)), (src.rejected(i), dst.rejected(i))):
                if a.exists():
                    with atomic_path(b) as tmp:
                        _copy_file(a, tmp, link=True)
            with atomic_path(dst.marker("score", i)) as tmp:
                _copy_file(marker, tmp, link=False)


def _copy_file(a: str | os.PathLike[str], tmp: str | os.PathLike[str], link: bool) -> None:
    """Copy `a` (a local path or an object-store URI) to the local temporary `tmp` (a hard
    link where asked and possible)."""
    if storage.is_remote(a):
        with storage.open_input(str(a)) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return
    if link:
        try:
            os.link(a, tmp)
            return
        except OSError:
            pass
    shutil.copy2(a, tmp)


def cmd_inspect(args: argparse.Namespace) -> int:
    from thresher.report.inspect import inspect_path

    print(inspect_path(args.path, as_json=args.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thresher", description="Select and weight LLM training data.")
    # `main` takes --debug out of argv wherever it stands (before or after the sub-command)
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    parser.add_argument("--version", action="version", version=f"thresher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a job: score, select, write shards")
    _job_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("score", help="run only the scoring stage (scores saved for `thresher select`)")
    _job_args(p)
    p.set_defaults(func=lambda a: cmd_run(a, score_only=True))
    p = sub.add_parser("dedup", help="run only a job's `dedup:` section: every row that is not a removed duplicate "
                                     "is selected (no filters, selector all)")
    _spec_args(p)
    p.add_argument("--overwrite", action="store_true", help="discard what the output folder holds and start afresh")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_dedup)
    p = sub.add_parser("config", help="print the resolved job with every default, and check it (runs nothing)")
    _spec_args(p)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("select", help="re-select on saved scores with a new selector/budget/filters")
    p.add_argument("path", help="output folder of an earlier run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set selector.budget=0.2; applied after --selector")
    p.add_argument("--selector", help="selector type, or a YAML file holding a selector mapping; keeps the "
                                      "earlier budget (budget_unit, token_column) unless given")
    p.add_argument("--output", "-o", help="write the new selection to another folder (scores are linked); "
                                          "without it the folder's selection is replaced in place")
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


# errors that are the user's to fix, printed as one line (exit code 2); the model and scorer
# errors are looked up only once their module is loaded (the CLI does not import torch itself)
_USER_ERRORS = (("thresher.models.loading", "ModelError"), ("thresher.scorers.base", "ScorerError"),
                ("thresher.common.device", "DeviceError"))


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, JobError):
        return True
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


def _one_line(exc: BaseException) -> str:
    """An error message on one line (a multi-line message joined with `; `)."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    return "; ".join(line for line in lines if line) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        if argv and argv[0] in PLUGINS:  # plugins parse their own options
            return _plugin(PLUGINS[argv[0]][0], argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        if debug:
            import traceback

            traceback.print_exc()
        print(f"thresher: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thresher: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
