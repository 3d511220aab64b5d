"""Serving a trained run over HTTP: one model for every task, requests of different tasks in one batch."""
