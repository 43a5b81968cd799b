"""The entry points (with trainer/main.py, the job script): ``cmg`` (``cmg.py``, the dispatcher and the torch-free
parsers of train, eval and encode), ``python -m trainer.programs.supervisor`` (``cmg launch``), ``.evaluate``
(``cmg eval``), ``.encode`` (``cmg encode``), ``.toc_report``, ``.demo`` (``make demo``), ``.continual`` (the
continual phases as a chain of Slurm jobs), ``.mlflow_ui`` (``cmg ui``) and the benchmarks ``.bench.<name>``. They
share ``trainer.programs.harness`` and may import the library and ``shards``; the library (the rest of ``trainer``)
and ``shards`` never import anything from here (``tests/unit/test_layering.py``)."""
