"""The repository's benchmarks (not installed with thresher): scripts, their helpers, and the
selection-quality benchmark package `benchmarks.selection`."""
