"""Pretraining: a Llama model trained on the packed phase-1 mix, then annealed on phase 2."""
