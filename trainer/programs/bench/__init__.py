"""Benchmarks: commands that print tables (``python -m trainer.programs.bench.<name>``); never timed tests."""
