"""The serving load benchmark's parts; bench/serve.py is its entry point and describes it."""
