"""Evaluation: bits-per-byte per source on held-out records, for each training phase."""
