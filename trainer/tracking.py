"""MLflow tracking for the training loop: one code path on every rank, never a reason to stop training.

API (rank 0 gets a ``Tracker``; every other rank, or ``enabled: false``, gets a ``NullTracker`` with the
same methods doing nothing, so the loop has no ``if rank == 0`` around tracking)::

    tracker = create_tracker(cfg.tracking, run_dir, is_main=rank == 0)
    tracker.load_state_dict(ckpt["tracking"])        # on resume only: continue the same MLflow run
    tracker.start(tags={"phase": "pretrain_av"})     # + git commit, world size, Slurm job id
    tracker.log_config(cfg)                          # flattened params + config/resolved.yaml
    for step in ...:
        if tracker.should_log(step):                 # same answer on every rank (collectives stay matched)
            tracker.log_metrics({"loss/total": loss, "codes/perplexity": ppl}, step)
            tracker.log_code_usage({"audio": n_a, "video": n_v}, step, plot=tracker.should_plot(step))
    ckpt["tracking"] = tracker.state_dict()          # run id + anything not yet delivered
    tracker.log_tensor(codebook, "codebook/final.npy")
    tracker.end("FINISHED")                          # "KILLED" on preemption, "FAILED" on a crash

Delivery and failure policy. Everything is logged synchronously from the calling thread, but:
- a call first queues its data in memory (metrics in a bounded buffer that drops the oldest points and
  counts them, artifacts as files under ``<run_dir>/tracking/``), then delivers the queue if the last
  delivery is at least ``flush_interval_s`` old: against a sqlite-backed server on the 2-core CPU box a
  ``log_batch`` request took 12-30 ms with 10 points and about 0.1 s with 1000, so batching in time
  cuts the loop's cost of tracking 7-10 fold (``start``, ``flush`` and ``end`` deliver at once);
- when delivery fails (server down, timeout, database locked...) the tracker warns once, keeps the
  queue and does not try again for ``retry_interval_s`` (doubling after each failure, up to
  ``max_retry_interval_s``); calls in between only queue, so they cost microseconds;
- each delivery attempt runs with MLflow's HTTP settings scoped to the tracker's own calls:
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=http_max_retries`` (default 0; MLflow's own default of 7 retries
  with exponential backoff blocks for minutes) and ``MLFLOW_HTTP_REQUEST_TIMEOUT=http_timeout_s``;
  so one attempt blocks for at most about ``http_timeout_s * (http_max_retries + 1)`` seconds;
- a batch the server *rejects* (HTTP 4xx: an invalid value, a deleted run) is dropped with a warning
  rather than retried forever; a rejected run creation disables the tracker;
- exact re-sends are harmless: every metric keeps the timestamp it was logged with, and MLflow's SQL
  store ignores a point identical in key, step, timestamp and value.
The tracker raises only for caller bugs detected before any I/O (an unknown end status, a bad
artifact name, malformed code-usage counts, ``start()`` twice), never for tracking failures.

Code-usage classes (CMG paper, seed 001 §5.5 Fig. 4; appendix seed 000 §E Fig. 2): for each code, the
share of its assignments that came from each modality decides whether it is used by one modality only
(share >= ``dominance``, 80% in the paper), shared, or unused; see ``classify_code_usage``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import posixpath
import re
import subprocess
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from trainer import distributed
from trainer.config import flatten, to_dict

log = logging.getLogger(__name__)

# MLflow's limits (mlflow/utils/validation.py, 3.x): checked here so that a long value is shortened
# visibly instead of being rejected (or silently truncated) by the server.
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250
PARAMS_PER_REQUEST = 100
METRICS_PER_REQUEST = 1000

RunStatus = Literal["FINISHED", "KILLED", "FAILED"]


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
        if self.retry_interval_s < 0 or self.max_retry_interval_s < self.retry_interval_s:
            raise ValueError("need 0 <= retry_interval_s <= max_retry_interval_s, got "
                             f"{self.retry_interval_s} and {self.max_retry_interval_s}")
        if not 0.5 < self.usage_dominance <= 1.0:
            raise ValueError(f"usage_dominance must be in (0.5, 1], got {self.usage_dominance}")
        if not self.experiment:
            raise ValueError("experiment name must not be empty")


class TrackingWarning(RuntimeWarning):
    """Tracking degraded (server unreachable, data dropped or rejected); training goes on."""


def resolve_tracking_uri(cfg: TrackingConfig, run_dir: str | Path) -> str:
    """``cfg.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite file in the run directory."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    # sqlite:/// + an absolute path gives the four slashes SQLAlchemy wants for absolute files.
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _local_artifact_root(tracking_uri: str) -> str | None:
    """Artifact root for experiments created in a server-less sqlite store: next to the database file.

    Without it MLflow would put them in ./mlruns of whatever the working directory is. For an HTTP
    server the server's own default (usually its proxied artifact store) applies.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def clean_key(key: str) -> str:
    """A key MLflow accepts: allowed characters only, no path tricks, at most 250 characters.

    Keys cut to length keep a hash of the full key, so distinct long keys stay distinct.
    """
    cleaned = _INVALID_KEY_CHARS.sub("_", str(key))
    # MLflow rejects names that change under normpath ("a//b", "./a", "a/") or climb ("../a").
    cleaned = posixpath.normpath(cleaned).lstrip("/")
    if cleaned in ("", ".") or cleaned.startswith(".."):
        cleaned = "_" + cleaned.replace("/", "_")
    if len(cleaned) > MAX_KEY_CHARS:
        digest = hashlib.sha1(str(key).encode()).hexdigest()[:10]
        cleaned = f"{cleaned[:MAX_KEY_CHARS - 11]}_{digest}"
    return cleaned


def _shorten(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    marker = f"...[{len(value) - limit} more chars cut]"
    return value[:limit - len(marker)] + marker


def mlflow_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten a (nested) mapping into MLflow params: clean unique keys, string values <= 6000 chars.

    Values that are too long are cut with a visible marker (the full config is logged as an artifact).
    Two keys that clean to the same name get ``_2``, ``_3``... so no value is silently overwritten.
    """
    out: dict[str, str] = {}
    for key, value in flatten(to_dict(params)).items():
        name = clean_key(key)
        base, n = name, 1
        while name in out:
            n += 1
            suffix = f"_{n}"
            name = base[:MAX_KEY_CHARS - len(suffix)] + suffix
        out[name] = _shorten(str(value), MAX_PARAM_VALUE_CHARS)
    return out


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    return {clean_key(k): _shorten(str(v), MAX_TAG_VALUE_CHARS) for k, v in tags.items()}


def _git_tags(repo_dir: Path) -> dict[str, str]:
    """Commit of the working tree that runs (MLflow's standard tag, shown in the UI) and whether it is dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, or no commit yet
        return {}
    return {"mlflow.source.git.commit": commit, "git_dirty": str(dirty).lower()}


# ----------------------------------------------------------------------------------------------------
# Code usage (CMG Fig. 4)

_MODALITY_COLOURS = {"audio": "#d62728", "video": "#1f77b4", "text": "#2ca02c",
                     "image": "#ff7f0e", "speech": "#8c564b"}
_SPARE_COLOURS = ("#e377c2", "#17becf", "#7f7f7f", "#aec7e8", "#ff9896")
_SHARED_COLOUR, _MIXED_COLOUR, _UNUSED_COLOUR = "#9467bd", "#bcbd22", "#000000"


@dataclass(frozen=True)
class CodeUsage:
    """Per-code usage classes. ``counts`` is ``(n m)``: assignments of modality ``modalities[i]`` to each code.

    ``class_names`` in display order: ``shared``, ``<modality>_only`` per modality, ``mixed`` (three or
    more modalities only), ``unused``; ``code_class`` ``(m,)`` indexes into it.
    """
    modalities: tuple[str, ...]
    counts: np.ndarray
    class_names: tuple[str, ...]
    code_class: np.ndarray
    dominance: float

    def summary(self) -> dict[str, int]:
        """Number of codes in each class, e.g. ``{"shared": 370, "audio_only": 12, ..., "unused": 3}``."""
        return {name: int((self.code_class == i).sum()) for i, name in enumerate(self.class_names)}

    def order(self) -> np.ndarray:
        """Code indices sorted by class (display order), then by total assignments, most used first."""
        return np.lexsort((-self.counts.sum(0), self.code_class))

    def shares(self) -> np.ndarray:
        """``(n m)`` fraction of each code's assignments per modality (0 for unused codes)."""
        total = self.counts.sum(0)
        return np.divide(self.counts, total, out=np.zeros_like(self.counts), where=total > 0)


def classify_code_usage(counts: Mapping[str, Any], dominance: float = 0.8) -> CodeUsage:
    """Class of each code from per-modality usage counts ``{"audio": (m,), "video": (m,), ...}``.

    With s_k the share of code i's assignments that came from modality k (seed 001 Fig. 4: red / blue
    when one modality holds more than 80%, green when each holds more than 20%; appendix Fig. 2 adds
    black for never-activated codes):
    - ``unused``: no assignments;
    - ``<k>_only``: s_k >= ``dominance`` (``dominance=1`` means strictly one modality);
    - ``shared``: otherwise, with two modalities; with n >= 3, only if every modality uses the code and
      holds at least (1 - dominance) / (n - 1) of it (the two-modality rule, generalised);
    - ``mixed`` (n >= 3): the rest: no modality dominates but some modality barely or never uses it.
    Counts may be integer or fractional (EMA counts), tensors or arrays; they must be non-negative.
    """
    if not 0.5 < dominance <= 1.0:
        raise ValueError(f"dominance must be in (0.5, 1], got {dominance}")
    if not isinstance(counts, Mapping):
        raise ValueError(f"code-usage counts must map modality names to (m,) counts, got {type(counts).__name__}")
    if len(counts) < 2:
        raise ValueError(f"code-usage counts need at least two modalities, got {list(counts)}")
    rows, size = [], None
    for name, value in counts.items():
        arr = torch.as_tensor(value).detach().cpu().double().numpy()
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"code-usage counts['{name}'] has shape {tuple(arr.shape)}; expected (m,) with m >= 1")
        if size is not None and arr.size != size:
            raise ValueError(f"code-usage counts['{name}'] has {arr.size} codes; "
                             f"counts['{next(iter(counts))}'] has {size}")
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError(f"code-usage counts['{name}'] must be finite and non-negative")
        size = arr.size
        rows.append(arr)
    modalities = tuple(str(k) for k in counts)
    n = len(modalities)
    class_names = ("shared", *(f"{m}_only" for m in modalities), *(("mixed",) if n >= 3 else ()), "unused")
    index = {name: i for i, name in enumerate(class_names)}

    usage = CodeUsage(modalities, np.stack(rows), class_names, np.full(size, index["unused"]), dominance)
    share = usage.shares()
    used = usage.counts.sum(0) > 0
    single = used & (share.max(0) >= dominance)
    only_index = np.array([index[f"{m}_only"] for m in modalities])
    usage.code_class[single] = only_index[share.argmax(0)[single]]
    rest = used & ~single
    if n == 2:
        usage.code_class[rest] = index["shared"]   # not dominated <=> each share > 1 - dominance
    else:
        # 1e-12: (1 - 0.7) / 2 is 0.15000000000000002 in floats; a share of exactly 15% must pass.
        by_all = (share.min(0) >= (1.0 - dominance) / (n - 1) - 1e-12) & (usage.counts.min(0) > 0)
        usage.code_class[rest & by_all] = index["shared"]
        usage.code_class[rest & ~by_all] = index["mixed"]
    return usage


def _class_style(usage: CodeUsage) -> list[tuple[str, str]]:
    """(legend label, colour) per class, in ``usage.class_names`` order."""
    n, d = len(usage.modalities), usage.dominance
    spare = iter(_SPARE_COLOURS * (1 + n // len(_SPARE_COLOURS)))
    colour = {m: _MODALITY_COLOURS.get(m) or next(spare) for m in usage.modalities}
    style = []
    for name in usage.class_names:
        if name == "shared":
            label = (f"shared by {' & '.join(usage.modalities)}" if n == 2
                     else f"shared by all (each >= {(1 - d) / (n - 1):.0%})")
            style.append((label, _SHARED_COLOUR))
        elif name == "mixed":
            style.append(("mixed (not shared by all)", _MIXED_COLOUR))
        elif name == "unused":
            style.append(("unused", _UNUSED_COLOUR))
        else:
            modality = name[:-len("_only")]
            style.append((f"{modality} only (>= {d:.0%})", colour[modality]))
    return style


def plot_code_usage(counts: CodeUsage | Mapping[str, Any], path: str | Path | None = None, *,
                    dominance: float = 0.8, title: str | None = None) -> Path | bytes:
    """Draw the code-usage figure (like seed 001 Fig. 4) as a PNG; return ``path``, or the bytes if no path.

    Top: one dot per code on a square grid, coloured by class, codes sorted by class and then by use
    (so the picture reads as proportions), class counts in the legend. Bottom: for the same order, a
    stacked bar per code with each modality's share of its assignments.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg directly: no pyplot global state
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    usage = counts if isinstance(counts, CodeUsage) else classify_code_usage(counts, dominance)
    order = usage.order()
    m = order.size
    style = _class_style(usage)
    cols = math.ceil(math.sqrt(m))
    rows = math.ceil(m / cols)
    palette = np.array([to_rgb(colour) for _, colour in style])

    fig = Figure(figsize=(9, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid_ax, share_ax = fig.subplots(2, 1, height_ratios=[3, 1])
    # One dot per code, row by row from the top left, in display order.
    cell_pt = 4.5 * 72 / cols                       # the grid axes are about 4.5 inches wide
    grid_ax.scatter(np.arange(m) % cols, np.arange(m) // cols, c=palette[usage.code_class[order]],
                    s=(0.8 * cell_pt) ** 2, marker="s", linewidths=0)
    grid_ax.set_xlim(-0.5, cols - 0.5)
    grid_ax.set_ylim(rows - 0.5, -0.5)
    grid_ax.set_aspect("equal")
    grid_ax.set_xticks([])
    grid_ax.set_yticks([])
    grid_ax.set_title(title or f"code usage: {m} codes, {' / '.join(usage.modalities)}")
    summary = usage.summary()
    grid_ax.legend(handles=[Patch(color=c, label=f"{label}: {summary[name]}")
                            for name, (label, c) in zip(usage.class_names, style)],
                   loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)

    share = usage.shares()[:, order]
    bottom = np.zeros(m)
    for i, modality in enumerate(usage.modalities):
        label, colour = style[usage.class_names.index(f"{modality}_only")]
        share_ax.bar(np.arange(m), share[i], bottom=bottom, width=1.0, color=colour, linewidth=0,
                     label=modality)
        bottom += share[i]
    share_ax.set_xlim(-0.5, m - 0.5)
    share_ax.set_ylim(0, 1)
    share_ax.set_ylabel("share")
    share_ax.set_xlabel("code (sorted as above)")
    share_ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)

    if path is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


# ----------------------------------------------------------------------------------------------------
# Trackers

@dataclass(frozen=True)
class TrackerStats:
    pending_metrics: int = 0      # metric points queued, not yet delivered
    dropped_metrics: int = 0      # oldest points dropped because the buffer was full
    pending_artifacts: int = 0
    dropped_artifacts: int = 0    # oldest artifacts dropped because the queue was full, or file gone
    rejected: int = 0             # entities the server refused (HTTP 4xx), dropped
    failed_attempts: int = 0      # delivery attempts that failed (server unreachable, timeout...)
    connected: bool = False       # the last delivery attempt succeeded


class NullTracker:
    """The tracker API doing nothing: what ranks other than 0 (or ``enabled: false``) get.

    ``should_log``/``should_plot`` still answer from the config, identically on every rank, so a loop
    that computes something collective only on logging steps stays in step across ranks.
    """

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg

    @property
    def run_id(self) -> str | None:
        return None

    @property
    def stats(self) -> TrackerStats:
        return TrackerStats()

    def should_log(self, step: int) -> bool:
        return step % self.cfg.log_every == 0

    def should_plot(self, step: int) -> bool:
        return step % self.cfg.plot_every == 0

    def start(self, run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> None:
        """Create the run, or continue run ``run_id`` (or the one from ``load_state_dict``)."""

    def log_config(self, cfg: Any, artifact_file: str = "config/resolved.yaml") -> None:
        """Flattened params of a config dataclass/mapping, plus the resolved config as a YAML artifact."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params from a (nested) mapping; see ``mlflow_params`` for key/value limits."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Scalar metrics (floats or one-element tensors) at ``step``; queued, sent in batches."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Run tags; values are stringified."""

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        """Upload an existing file under ``artifact_dir`` of the run."""

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure (anything with ``savefig``) or PNG bytes, as ``artifact_file``."""

    def log_tensor(self, tensor: torch.Tensor, artifact_file: str) -> None:
        """A tensor as ``.npy`` (numpy, no pickle) or ``.pt`` (loads with ``weights_only=True``)."""

    def log_code_usage(self, counts: Mapping[str, Any], step: int, plot: bool = False) -> None:
        """``codes/<class>`` and ``codes/active`` metrics from per-modality counts; with ``plot``, the PNG too."""

    def flush(self) -> bool:
        """Try to deliver everything queued now, ignoring the retry wait; True if nothing is left."""
        return True

    def end(self, status: RunStatus = "FINISHED") -> None:
        """Deliver what is queued and close the run with ``status``; nothing is delivered after it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the run id to continue and the undelivered queue (call before ``start``)."""


class Tracker(NullTracker):
    """MLflow tracking for rank 0 (see the module docstring for the failure policy)."""

    def __init__(self, cfg: TrackingConfig, run_dir: str | Path) -> None:
        super().__init__(cfg)
        self.run_dir = Path(run_dir)
        self.local_dir = self.run_dir / "tracking"   # files waiting for / mirroring their upload
        self.tracking_uri = resolve_tracking_uri(cfg, self.run_dir)
        self._client = None
        self._run_id: str | None = None
        self._resuming = False         # _run_id came from a checkpoint and has not been reopened yet
        self._run_ready = False
        self._started = False
        self._closed = False
        self._disabled = False
        self._params: dict[str, str] = {}            # queued
        self._sent_params: dict[str, str] = {}       # known to the server (MLflow params are immutable)
        self._tags: dict[str, str] = {}
        self._metrics: deque[tuple[str, float, int, int]] = deque()   # (key, value, timestamp ms, step)
        self._artifacts: list[tuple[str, str | None]] = []           # (local file, artifact dir)
        self._status: str | None = None
        self._dropped_metrics = self._dropped_artifacts = self._rejected = self._failed_attempts = 0
        self._connected = False
        self._next_attempt = 0.0
        self._retry_interval = cfg.retry_interval_s
        self._warned: set[str] = set()

    # -- public API ---------------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def stats(self) -> TrackerStats:
        return TrackerStats(len(self._metrics), self._dropped_metrics, len(self._artifacts),
                            self._dropped_artifacts, self._rejected, self._failed_attempts, self._connected)

    def start(self, run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> None:
        if self._started:
            raise RuntimeError("Tracker.start() called twice")
        self._started = True
        if run_id is not None:
            self._run_id, self._resuming = run_id, True
        self._tags.update(_tag_values(self._default_tags()))
        self._tags.update(_tag_values(tags or {}))
        self._deliver()

    def log_config(self, cfg: Any, artifact_file: str = "config/resolved.yaml") -> None:
        tree = to_dict(cfg)
        if not isinstance(tree, Mapping):
            raise TypeError(f"log_config needs a config dataclass or mapping, got {type(cfg).__name__}")
        self._params.update(mlflow_params(tree))
        self._save_artifact(artifact_file, lambda path: path.write_text(yaml.safe_dump(dict(tree), sort_keys=False)))
        self._deliver()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._params.update(mlflow_params(params))
        self._deliver()

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError, RuntimeError):
                self._warn_once(f"value:{key}", f"metric '{key}' has a non-scalar value {value!r}; not logged")
                continue
            if len(self._metrics) >= self.cfg.max_buffered_metrics:
                self._metrics.popleft()
                self._dropped_metrics += 1
                self._warn_once("metrics-full", f"MLflow metric buffer full ({self.cfg.max_buffered_metrics} "
                                "points); dropping the oldest (count in tracker.stats.dropped_metrics)")
            self._metrics.append((clean_key(key), value, timestamp, int(step)))
        self._deliver()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._tags.update(_tag_values(tags))
        self._deliver()

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        local_path = Path(local_path)
        if not local_path.is_file():
            raise ValueError(f"artifact file not found: {local_path}")
        if artifact_dir is not None:
            _check_artifact_name(artifact_dir)
        self._queue(local_path.resolve(), artifact_dir)
        self._deliver()

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if isinstance(figure, (bytes, bytearray)):
            self._save_artifact(artifact_file, lambda path: path.write_bytes(bytes(figure)))
        else:
            self._save_artifact(artifact_file, lambda path: figure.savefig(path, format="png"))
        self._deliver()

    def log_tensor(self, tensor: torch.Tensor, artifact_file: str) -> None:
        suffix = Path(artifact_file).suffix
        if suffix not in (".npy", ".pt"):
            raise ValueError(f"log_tensor saves .npy or .pt files, got '{artifact_file}'")
        # clone: a view would save its whole underlying storage with torch.save.
        data = tensor.detach().cpu().clone()
        if suffix == ".npy":
            if data.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
                data = data.float()
            self._save_artifact(artifact_file, lambda path: np.save(path, data.numpy(), allow_pickle=False))
        else:
            self._save_artifact(artifact_file, lambda path: torch.save(data, path))
        self._deliver()

    def log_code_usage(self, counts: Mapping[str, Any], step: int, plot: bool = False) -> None:
        usage = classify_code_usage(counts, self.cfg.usage_dominance)
        summary = usage.summary()
        metrics = {f"codes/{name}": n for name, n in summary.items()}
        metrics["codes/active"] = usage.code_class.size - summary["unused"]
        if plot:
            self._save_artifact(f"code_usage/step_{step:08d}.png",
                                lambda path: plot_code_usage(usage, path, title=f"code usage at step {step}"))
        self.log_metrics(metrics, step)

    def flush(self) -> bool:
        self._deliver(force=True)
        return not self._pending()

    def end(self, status: RunStatus = "FINISHED") -> None:
        if status not in ("FINISHED", "KILLED", "FAILED"):
            raise ValueError(f"run status must be FINISHED, KILLED or FAILED, got {status!r}")
        if self._closed:
            return
        self._status = status
        if self._started:
            self._deliver(force=True)
        if self._started and self._pending() and not self._disabled:
            warnings.warn(f"MLflow run {self._run_id or '(never created)'} ended with undelivered data: "
                          f"{len(self._metrics)} metric points, {len(self._params)} params, "
                          f"{len(self._tags)} tags, {len(self._artifacts)} artifacts, status "
                          f"{'not ' if self._status else ''}set; local files stay in {self.local_dir}",
                          TrackingWarning, stacklevel=2)
        self._closed = True

    def state_dict(self) -> dict[str, Any]:
        """Plain lists/strings/numbers only, so it loads with ``torch.load(weights_only=True)``."""
        return {"run_id": self._run_id,
                "metrics": [list(point) for point in self._metrics],
                "artifacts": [[path, artifact_dir] for path, artifact_dir in self._artifacts]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._started:
            raise RuntimeError("Tracker.load_state_dict() must come before start()")
        for key in ("run_id", "metrics", "artifacts"):
            if key not in state:
                raise ValueError(f"tracker state is missing '{key}' (has {sorted(state)})")
        self._run_id = state["run_id"]
        self._resuming = self._run_id is not None
        for key, value, timestamp, step in state["metrics"]:
            self._metrics.append((str(key), float(value), int(timestamp), int(step)))
        while len(self._metrics) > self.cfg.max_buffered_metrics:
            self._metrics.popleft()
            self._dropped_metrics += 1
        for path, artifact_dir in state["artifacts"]:
            self._queue(Path(path), artifact_dir)

    # -- queueing -----------------------------------------------------------------------------------

    def _save_artifact(self, artifact_file: str, write: Callable[[Path], object]) -> None:
        """``write(path)`` the file into the local mirror and queue its upload as ``artifact_file``.

        A local I/O failure (disk full, permissions) warns and skips this artifact.
        """
        _check_artifact_name(artifact_file)
        path = self.local_dir / artifact_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
        except OSError as err:
            self._warn_once(f"write:{path.parent}", f"could not write tracking file {path}: {err}; skipped")
            return
        self._queue(path, posixpath.dirname(artifact_file) or None)

    def _queue(self, path: Path, artifact_dir: str | None) -> None:
        entry = (str(path), artifact_dir)
        if entry in self._artifacts:       # a re-written file is uploaded once, in its latest version
            return
        if len(self._artifacts) >= self.cfg.max_pending_artifacts:
            self._artifacts.pop(0)
            self._dropped_artifacts += 1
            self._warn_once("artifacts-full", f"more than {self.cfg.max_pending_artifacts} artifacts waiting "
                            "for MLflow; dropping the oldest (their files stay in the run directory)")
        self._artifacts.append(entry)

    def _pending(self) -> bool:
        return bool(self._metrics or self._params or self._tags or self._artifacts or self._status
                    or not self._run_ready)

    # -- delivery -----------------------------------------------------------------------------------

    def _default_tags(self) -> dict[str, Any]:
        tags: dict[str, Any] = {"world_size": distributed.world_size()}
        tags.update(_git_tags(Path(__file__).resolve().parent.parent))
        if os.environ.get("SLURM_JOB_ID"):
            tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        return tags

    @contextlib.contextmanager
    def _http_settings(self) -> Iterator[None]:
        """MLflow reads these per request; scope them to the tracker's calls and restore the caller's."""
        settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.cfg.http_max_retries),
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.cfg.http_timeout_s),
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}   # keeps the progress bar clean
        saved = {name: os.environ.get(name) for name in settings}
        os.environ.update(settings)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _deliver(self, force: bool = False) -> None:
        """Send the queue, in order run -> params -> tags -> metrics -> artifacts -> status.

        Unless ``force``, nothing happens before ``_next_attempt``: ``flush_interval_s`` after a
        delivery, the (growing) retry interval after a failure.
        """
        if not self._started or self._closed or self._disabled:
            return
        now = time.monotonic()
        if not force and now < self._next_attempt:
            return
        try:
            with self._http_settings():
                self._ensure_run()
                self._send_params()
                self._send_tags()
                self._send_metrics()
                self._send_artifacts()
                self._send_status()
        except Exception as err:  # noqa: BLE001 - whatever the tracking backend raises, training goes on
            self._connected = False
            if not self._run_ready and _is_rejection(err):
                self._disabled = True
                warnings.warn(f"MLflow at {self.tracking_uri} refused to open the run ({err}); tracking is "
                              "disabled for this job, training goes on", TrackingWarning, stacklevel=3)
                return
            self._failed_attempts += 1
            self._next_attempt = now + self._retry_interval
            if "down" not in self._warned:
                self._warned.add("down")
                warnings.warn(f"MLflow at {self.tracking_uri} is unavailable ({type(err).__name__}: {err}); "
                              f"buffering metrics (up to {self.cfg.max_buffered_metrics}) and artifacts, "
                              f"retrying in {self._retry_interval:.0f}s; training goes on",
                              TrackingWarning, stacklevel=3)
            self._retry_interval = min(2 * self._retry_interval, self.cfg.max_retry_interval_s)
            return
        if "down" in self._warned:
            self._warned.discard("down")   # warn again if it goes down again
            log.warning("MLflow at %s reachable again; buffered data delivered (%d metric points dropped "
                        "while it was down)", self.tracking_uri, self._dropped_metrics)
        self._connected = True
        self._retry_interval = self.cfg.retry_interval_s
        self._next_attempt = now + self.cfg.flush_interval_s

    def _ensure_run(self) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if self._run_ready:
            return
        if self._resuming:
            try:
                run = self._client.get_run(self._run_id)
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                warnings.warn(f"MLflow run {self._run_id} from the checkpoint does not exist at "
                              f"{self.tracking_uri}; starting a new run", TrackingWarning, stacklevel=4)
                self._tags["resumed_from_missing_run"] = self._run_id
                self._run_id = None
            else:
                self._client.update_run(self._run_id, status="RUNNING")
                self._sent_params = dict(run.data.params)
                self._tags["resume_count"] = str(int(run.data.tags.get("resume_count", "0")) + 1)
            self._resuming = False
        if self._run_id is None:
            run = self._client.create_run(self._experiment_id(), run_name=self.cfg.run_name or self.run_dir.name)
            self._run_id = run.info.run_id
        self._run_ready = True

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(self.cfg.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self._client.create_experiment(self.cfg.experiment,
                                                  artifact_location=_local_artifact_root(self.tracking_uri))
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":   # another job created it just now
                raise
            return self._client.get_experiment_by_name(self.cfg.experiment).experiment_id

    def _send_params(self) -> None:
        from mlflow.entities import Param

        changed = sorted(k for k, v in self._params.items() if k in self._sent_params and self._sent_params[k] != v)
        if changed:
            # MLflow params are immutable: a resumed job with an edited config keeps the first values.
            self._warn_once("params-changed", f"params differ from those already logged in run {self._run_id} "
                            f"and are kept at their first values: {', '.join(changed)}")
            self._tags["params_changed"] = _shorten(", ".join(changed), MAX_TAG_VALUE_CHARS)
        new = [(k, v) for k, v in self._params.items() if k not in self._sent_params]
        for i in range(0, len(new), PARAMS_PER_REQUEST):
            chunk = new[i:i + PARAMS_PER_REQUEST]
            if self._send_batch("params", len(chunk), params=[Param(k, v) for k, v in chunk]):
                self._sent_params.update(chunk)
            for k, _ in chunk:
                del self._params[k]
        self._params.clear()   # what is left was already logged (same or changed value)

    def _send_tags(self) -> None:
        from mlflow.entities import RunTag

        items = list(self._tags.items())
        for i in range(0, len(items), PARAMS_PER_REQUEST):
            chunk = items[i:i + PARAMS_PER_REQUEST]
            self._send_batch("tags", len(chunk), tags=[RunTag(k, v) for k, v in chunk])
            for k, _ in chunk:
                del self._tags[k]

    def _send_metrics(self) -> None:
        from mlflow.entities import Metric

        while self._metrics:
            chunk = [self._metrics[i] for i in range(min(METRICS_PER_REQUEST, len(self._metrics)))]
            self._send_batch("metrics", len(chunk), metrics=[Metric(k, v, ts, step) for k, v, ts, step in chunk])
            for _ in chunk:
                self._metrics.popleft()

    def _send_batch(self, kind: str, count: int, **entities: Any) -> bool:
        """One ``log_batch`` request; True if accepted, False if rejected (dropped); raises if unreachable."""
        try:
            self._client.log_batch(self._run_id, **entities)
        except Exception as err:  # noqa: BLE001 - sorted into rejected (drop) or transient (re-raise)
            if not _is_rejection(err):
                raise
            self._reject(kind, count, err)
            return False
        return True

    def _send_artifacts(self) -> None:
        while self._artifacts:
            path, artifact_dir = self._artifacts[0]
            if not Path(path).is_file():
                self._dropped_artifacts += 1
                self._warn_once(f"gone:{path}", f"artifact file {path} disappeared before upload; skipped")
            else:
                try:
                    self._client.log_artifact(self._run_id, path, artifact_dir)
                except Exception as err:  # noqa: BLE001
                    if not _is_rejection(err):
                        raise
                    self._reject("artifact", 1, err)
            self._artifacts.pop(0)

    def _send_status(self) -> None:
        if self._status is not None:
            self._client.set_terminated(self._run_id, self._status)
            self._status = None

    def _reject(self, kind: str, count: int, err: Exception) -> None:
        self._rejected += count
        self._warn_once(f"rejected:{kind}", f"MLflow rejected {count} {kind} of run {self._run_id} ({err}); "
                        "dropped (count in tracker.stats.rejected)")

    def _warn_once(self, topic: str, message: str) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            warnings.warn(message, TrackingWarning, stacklevel=4)


def _is_rejection(err: Exception) -> bool:
    """The server understood and refused (HTTP 4xx): retrying the same request cannot succeed."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and 400 <= err.get_http_status_code() < 500


def _check_artifact_name(name: str) -> None:
    if not name or name.startswith("/") or ".." in Path(name).parts or posixpath.normpath(name) != name:
        raise ValueError(f"artifact path '{name}' must be a clean relative path like 'plots/usage.png'")


def create_tracker(cfg: TrackingConfig, run_dir: str | Path, *, is_main: bool) -> NullTracker:
    """A ``Tracker`` on the main process when tracking is enabled, else a ``NullTracker``."""
    if cfg.enabled and is_main:
        return Tracker(cfg, run_dir)
    return NullTracker(cfg)


__all__ = ["TrackingConfig", "TrackingWarning", "Tracker", "NullTracker", "TrackerStats", "create_tracker",
           "resolve_tracking_uri", "mlflow_params", "clean_key", "CodeUsage", "classify_code_usage",
           "plot_code_usage"]
