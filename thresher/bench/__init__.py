"""Benchmarks that exercise selection end to end (`thresher bench-selection`)."""
