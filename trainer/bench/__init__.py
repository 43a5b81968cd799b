"""Benchmarks: commands that print tables (``python -m trainer.bench.<name>``); never timed tests."""
