"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash-LSH)."""
