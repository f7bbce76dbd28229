"""Benchmarks against the anchors (same input, one run, ratios). `python -m bench [name ...]`."""
