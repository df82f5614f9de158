"""Job entry points: `python -m jobs.<name> --help`; each has `main(argv) -> int` and `--smoke`."""
