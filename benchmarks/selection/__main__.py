"""`python -m benchmarks.selection JOB.yaml [options]` (see `benchmarks.selection.cli`)."""

import sys

from benchmarks.selection.cli import main

sys.exit(main(sys.argv[1:]))
