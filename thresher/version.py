"""The version of thresher (ground layer: imports nothing)."""

__version__ = "0.1.0"
