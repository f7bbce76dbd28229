"""mix: held-out split, then the phase-1 (diverse) and phase-2 (anneal) training blends."""
