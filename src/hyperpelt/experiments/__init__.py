"""Experiment drivers built on the training loop (method comparisons over seeds)."""
