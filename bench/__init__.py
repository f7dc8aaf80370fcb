"""The benchmark behind `make bench`: `python -m bench.run` (not part of pytest)."""
