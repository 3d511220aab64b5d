"""Helpers that test files in several folders share (tests/ is on sys.path: pyproject's pytest pythonpath)."""
