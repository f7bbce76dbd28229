"""Quality gates: a Great Expectations suite per data stage (``python -m pipelines check <stage>``).

GX on whole corpora does not scale; on per-shard stats, a deterministic record
sample and a few derived columns it does. ``inputs`` turns a stage output into
small pandas frames (plus plain-Python file checks), ``suites`` says what is
expected of each frame, ``gx_runner`` validates them with an ephemeral GX
context (and builds Data Docs), ``gate`` writes ``reports/checks/<stage>.json``
and fails loudly.
"""
