"""The `thresher` command line: the CLI and every command implementation (top layer)."""
