"""The selection-quality benchmark: does a selection method beat random? (SPEC section 6)

Run it from the repository root: `python -m benchmarks.selection JOB.yaml [--quick] [...]`
(`make bench-selection`). Modules: `cli` (spec loading and the command), `harness` (what both
modes share), `text_bench` (pre-training text, BBC News pool), `instruction_bench` (instruction
data, ICon), `pool` / `instruction_pool` (the planted pools).
"""
