"""Downstream cross-modal generalisation on frozen codes of any task's model (ALGORITHMS.md §5).

- ``metrics``: accuracy, micro precision/recall/F1, recall@k, class-level precision@k;
- ``heads``: the AVE event classifier (max over T) and the AVVP per-segment tagger;
- ``probes``: the protocols (train on A, select on A's validation split, test on B's and A's test split; AVE,
  AVVP, AVE→AVVP, UCF(v)↔VGG(a); zero-shot retrieval by clip and by class);
- ``paper``: the seeds' head settings and result tables, filled with one checkpoint's numbers;
- ``frozen_codes``: a pretraining checkpoint -> frozen model; features -> frozen quantised codes;
- ``retrieval``: zero-shot retrieval over unlabelled pairs of clips;
- ``toc``: TOC, the training-free choice of codebook dimensions;
- ``downstream``: an evaluation of one checkpoint: its datasets, the selected protocols, the report;
- ``during_training``: the probe the main job runs on its own checkpoints.

``python -m trainer.programs.evaluate`` (``cmg eval``) runs it on a checkpoint and logs to MLflow.
"""
