"""Shared helpers with one home each: device, seeds, atomic writes, threads, templates,
learning-rate schedule, Arrow columns. Imports only `thresher.specs` (and third-party
libraries, torch lazily)."""
