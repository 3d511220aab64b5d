"""Data utilities: multi-task sampling."""
