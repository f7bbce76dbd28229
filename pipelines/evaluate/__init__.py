"""Evaluation: bits-per-byte per source on held-out records, for each training phase."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see pipelines/train/__init__.py
