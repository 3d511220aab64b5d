"""Scoring runs: predictions → postprocess → metrics → per-task and average; reports."""
