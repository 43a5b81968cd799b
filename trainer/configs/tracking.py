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
    flush_interval_s: float = 10.0       # healthy: send the queue at most this often (0: on every call)
    http_timeout_s: int = 5              # MLFLOW_HTTP_REQUEST_TIMEOUT for the tracker's calls (whole seconds)
    http_max_retries: int = 0            # MLFLOW_HTTP_REQUEST_MAX_RETRIES for the tracker's calls
    retry_interval_s: float = 30.0       # wait after a failed delivery; doubles per failure...
    max_retry_interval_s: float = 600.0  # ...up to this
    max_buffered_metrics: int = 50_000   # undelivered metric points kept; the oldest are dropped beyond
    max_pending_artifacts: int = 200     # undelivered artifact files kept; the oldest are dropped beyond

    def __post_init__(self) -> None:
        for name in ("log_every", "plot_every", "http_timeout_s", "max_buffered_metrics", "max_pending_artifacts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.http_max_retries <= 10:  # MLflow refuses more than 10
            raise ValueError(f"http_max_retries must be in [0, 10], got {self.http_max_retries}")
        if self.flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {self.flush_interval_s}")
        if self.system_metrics_interval_s <= 0:
            raise ValueError(f"system_metrics_interval_s must be > 0, got {self.system_metrics_interval_s}")
        if self.retry_interval_s < 0 or self.max_retry_interval_s < self.retry_interval_s:
            raise ValueError("need 0 <= retry_interval_s <= max_retry_interval_s, got "
                             f"{self.retry_interval_s} and {self.max_retry_interval_s}")
        if not 0.5 < self.usage_dominance <= 1.0:
            raise ValueError(f"usage_dominance must be in (0.5, 1], got {self.usage_dominance}")
        if not self.experiment:
            raise ValueError("experiment name must not be empty")
