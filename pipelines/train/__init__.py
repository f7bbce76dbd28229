"""Pretraining: a Llama model trained on the packed phase-1 mix, then annealed on phase 2."""
import os

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU box, spinning threads
# of one process starve the others (a 2-thread step measured 20x slower under load).
# Only effective when set before torch is first imported in this process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
