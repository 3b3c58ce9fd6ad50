"""Command-line entry points: parse flags, build a config, call one function, exit codes."""
