"""The shared `main(argv)` of the small training commands (train-proxy, train-classifier)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def run_command(prog: str, doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: Sequence[str] | None) -> int:
    """Parse `argv`, call `run`; a bad input is a one-line error and exit status 2."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
