"""Seams shared by every stage: record schema, shard I/O, manifests, stats, executor, storage."""
