"""`python -m benchmarks.selection JOB.yaml [options]`: read a benchmark spec, run its mode, write
the results folder (`selection_quality.json` / `.md`, HTML report) and, for full runs, the
Markdown table under the results folder (default: `benchmarks/results`, beside this package).

`mode: pretrain` (default) is `text_bench`; `mode: instruction` is `instruction_bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from benchmarks.selection.harness import DEFAULT_RESULTS, RESULTS_FILE, CommonSpec, merge, write_outputs
from benchmarks.selection.instruction_bench import (QUICK_INSTRUCTION, InstructionBenchSpec, markdown_instruction,
                                                    run_instruction_bench)
from benchmarks.selection.text_bench import QUICK, BenchSpec, markdown, merge_results, quick_regimes, run_bench
from thresher.common.atomic import write_text_atomic
from thresher.specs import JobError

COMMAND = "python -m benchmarks.selection"
# the Markdown table of a full run, in the results folder, per mode
RESULTS_MD = {"pretrain": "selection_quality.md", "instruction": "selection_quality_icon.md"}


def load_spec(path: str | Path | None, quick: bool = False, overrides: dict[str, Any] | None = None) -> CommonSpec:
    """Read and validate a benchmark spec; `quick` shrinks it for tests.

    `mode: instruction` gives an `InstructionBenchSpec`, anything else a `BenchSpec` (pre-training text).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise JobError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise JobError(f"{path}: a benchmark spec is a mapping")
    spec_cls: type[CommonSpec] = BenchSpec
    quick_over: dict[str, Any] = QUICK
    if raw.get("mode") == "instruction":
        spec_cls, quick_over = InstructionBenchSpec, QUICK_INSTRUCTION
    if quick:
        raw = merge(raw, quick_over)
        if spec_cls is BenchSpec:  # every regime: QUICK's steps, one epoch where it counts epochs
            raw = quick_regimes(raw)
        for name, spec in (raw.get("methods") or {}).items():  # DATAMASK: fewer steps in quick mode
            if isinstance(spec, dict) and spec.get("type") == "datamask":
                raw["methods"][name] = {**spec, "steps": min(int(spec.get("steps", 400)), 60)}
    raw = merge(raw, overrides or {})
    try:
        return spec_cls.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path or 'bench spec'}: " + (".".join(str(x) for x in e["loc"]) + ": " if e["loc"] else "")
                 + e["msg"] for e in err.errors()]
        raise JobError("\n".join(lines)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=COMMAND,
                                description="Train a small GPT-2 on each method's selection and compare held-out "
                                            "loss against random (SPEC section 6).")
    p.add_argument("job", nargs="?", help="benchmark spec (YAML), e.g. jobs/bench_selection.yaml or "
                                          "jobs/bench_selection_icon.yaml (instruction data, ICon)")
    p.add_argument("--quick", action="store_true", help="a tiny run (tests, smoke checks): under a minute")
    p.add_argument("--output", "-o", help="override output folder")
    p.add_argument("--seeds", type=int, help="use seeds 0..N-1")
    p.add_argument("--results", metavar="DIR", default=str(DEFAULT_RESULTS),
                   help="results folder for the Markdown table of a full run: selection_quality.md, or "
                        "selection_quality_icon.md for instruction mode (default: %(default)s)")
    p.add_argument("--results-md", help="write the Markdown table to this file instead (also with --quick)")
    p.add_argument("--no-results-md", action="store_true", help="write no Markdown table outside the output folder")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--render", metavar="JSON", nargs="+",
                   help="pre-training mode: table existing results JSON files instead of running (e.g. the "
                        "selection_quality.partial.json a long run writes after each seed; several: runs of "
                        "the same job on different seeds, merged)")
    p.add_argument("--note", action="append", default=[], help="with --render: a note for the table (repeatable)")
    p.add_argument("--only-seeds", type=int, nargs="+", metavar="SEED", help="run these seeds only")
    p.add_argument("--quiet", "-q", action="store_true")
    return p


def run(argv: list[str]) -> int:
    """Parse `argv`, run the benchmark, write its outputs; JobError on a bad spec."""
    args = build_parser().parse_args(argv)
    over: dict[str, Any] = {}
    if args.output:
        over["output"] = args.output
    if args.seeds:
        over["seeds"] = list(range(args.seeds))
    if args.only_seeds:
        over["seeds"] = list(args.only_seeds)
    if args.threads:
        over["threads"] = args.threads
    spec = load_spec(args.job, quick=args.quick, overrides=over)
    if args.render:
        parts = [json.loads(Path(f).read_text()) for f in args.render]
        for part in parts:  # the regimes' descriptions are the job's (text, not results)
            for name, r in part["spec"].get("regimes", {}).items():
                if isinstance(spec, BenchSpec) and name in spec.regimes:
                    r["about"] = spec.regimes[name].about
        res = merge_results(parts)
        res["command"] = res.get("command") or " ".join([COMMAND, str(args.job)])
        res["notes"] = [*res.get("notes", []), *args.note]
        md = markdown(res)
        target = Path(args.results_md) if args.results_md else Path(args.results) / RESULTS_MD["pretrain"]
        write_text_atomic(md, target)
        write_text_atomic(json.dumps(res, indent=2), target.with_suffix(".json"))
        print(md)
        return 0
    if isinstance(spec, InstructionBenchSpec):
        res = run_instruction_bench(spec, quiet=args.quiet)
    else:
        assert isinstance(spec, BenchSpec)
        res = run_bench(spec, quiet=args.quiet, partial=Path(spec.output) / "selection_quality.partial.json")
    res["command"] = " ".join([COMMAND, *argv])
    md = markdown_instruction(res) if spec.mode == "instruction" else markdown(res)
    default_md = Path(args.results) / RESULTS_MD[spec.mode]
    md_path = Path(args.results_md) if args.results_md else (None if args.quick else default_md)
    if args.no_results_md:
        md_path = None
    out = Path(spec.output)
    report = write_outputs(res, md, out, md_path)
    if md_path is not None:  # the raw per-seed results beside the table
        write_text_atomic(json.dumps(res, indent=2), md_path.with_suffix(".json"))
    print(md)
    print(f"results: {out / RESULTS_FILE}; report: {report}"
          + (f"; table: {md_path} (raw: {md_path.with_suffix('.json')})" if md_path else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.selection`: 0 on success, 2 on a bad spec."""
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except JobError as exc:
        print(f"{COMMAND}: error: {exc}", file=sys.stderr)
        return 2
