"""Experiments: runs that answer a question about the pipeline, outside the stages (dvc.yaml calls none).

Each module here is one experiment with a ``main(argv) -> int``; run it as
``python -m pipelines.experiments NAME [args]``. They read the workspace's packed
data and params and may overwrite models/ and metrics/: run them in a scratch workspace.
"""
