"""`thresher report OUTPUT_DIR [DIR2 ...] [--output report.html]`: a self-contained HTML report."""

from __future__ import annotations

import argparse

from thresher.specs import JobError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="thresher report",
        description="HTML report (plots embedded as PNG) of one output folder, or a comparison of several; "
                    "a selection-benchmark folder (python -m benchmarks.selection) adds the held-out loss per method.")
    p.add_argument("paths", nargs="+", metavar="OUTPUT_DIR", help="output folder(s) of thresher runs or benchmarks")
    p.add_argument("--output", "-o", help="HTML file to write (default: FIRST_DIR/_report/report.html); "
                                       "the PNG figures are written next to it")
    return p


def main(argv: list[str]) -> int:
    """Entry point used by `thresher report`."""
    from thresher.report.html import write_report

    args = build_parser().parse_args(argv)
    try:
        out = write_report(args.paths, args.output)
    except FileNotFoundError as exc:
        raise JobError(f"report: {exc}") from None
    print(f"report: {out}")
    return 0
