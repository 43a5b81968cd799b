"""The ``tracking`` section of a job: MLflow (trainer/tracking.py logs with it; torch-free, like trainer.configs)."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass
class TrackingConfig:
    enabled: bool = True
    # None -> $MLFLOW_TRACKING_URI -> sqlite:///<run_dir>/mlflow.db (artifacts in <run_dir>/mlartifacts)
    tracking_uri: str | None = None
    experiment: str = "cmg-trainer"
    run_name: str | None = None          # None -> the run directory's name
    log_every: int = 10                  # metrics every K steps (should_log)
    plot_every: int = 500                # code-usage plot every K steps (should_plot)
    usage_dominance: float = 0.8         # Fig. 4 threshold: a code is "<m> only" when m has >= this share
    system_metrics: bool = True          # MLflow's system metrics (CPU, memory, disk, network, GPU) as system/*
    system_metrics_interval_s: float = 10.0   # their sampling interval
    flush_interval_s: int = 10           # MLflow's async logging sends its queue this often (0: at once)
    http_timeout_s: int = 5              # MLFLOW_HTTP_REQUEST_TIMEOUT (whole seconds)
    http_max_retries: int = 0            # MLFLOW_HTTP_REQUEST_MAX_RETRIES (MLflow's default 7 blocks for minutes)

    def __post_init__(self) -> None:
        for name, ok, rule in (
                ("log_every", self.log_every >= 1, ">= 1"), ("plot_every", self.plot_every >= 1, ">= 1"),
                ("http_timeout_s", self.http_timeout_s >= 1, ">= 1"), ("flush_interval_s", self.flush_interval_s >= 0,
                ">= 0"), ("http_max_retries", 0 <= self.http_max_retries <= 10, "in [0, 10] (MLflow's limit)"),
                ("system_metrics_interval_s", self.system_metrics_interval_s > 0, "> 0"),
                ("usage_dominance", 0.5 < self.usage_dominance <= 1.0, "in (0.5, 1]"),
                ("experiment", bool(self.experiment), "a name")):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")
