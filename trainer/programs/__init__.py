"""Programs built on the library: ``python -m trainer.programs.demo`` (``make demo``),
``python -m trainer.programs.continual`` (the continual phases as a chain of Slurm jobs) and the benchmarks
``python -m trainer.programs.bench.<name>``. They share ``trainer.programs.harness``; the library (the rest
of ``trainer``) never imports anything from here (``tests/unit/test_layering.py``)."""
