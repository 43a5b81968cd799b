"""Downstream cross-modal generalisation on frozen codes of any task's model (ALGORITHMS.md §5).

- ``metrics``: accuracy, micro precision/recall/F1, recall@k;
- ``heads``: the AVE event classifier (max over T) and the AVVP per-segment tagger;
- ``probes``: the protocol (train on A, select on A's validation split, test on B's and A's test split);
- ``encode``: a pretraining checkpoint -> frozen model; features -> frozen quantised codes.

``python -m trainer.evaluate`` runs it on a checkpoint and logs to MLflow.
"""
