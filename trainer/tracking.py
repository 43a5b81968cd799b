"""MLflow tracking for the training loop: one code path on every rank, never a reason to stop training.

API (rank 0 gets a ``Tracker``; every other rank, or ``enabled: false``, gets a ``NullTracker`` with the
same methods doing nothing, so the loop has no ``if rank == 0`` around tracking)::

    tracker = create_tracker(cfg.tracking, run_dir, is_main=rank == 0)
    tracker.load_state_dict(ckpt["tracking"])        # on resume only: continue the same MLflow run
    tracker.start(tags={"phase": "pretrain_av"})     # + git, user, source, world size, Slurm job id
    tracker.log_config(job)                          # params, config/resolved.yaml, description, the shard set
    for step in ...:
        if tracker.should_log(step):                 # same answer on every rank (collectives stay matched)
            tracker.log_metrics({"loss": loss, "cpc": cpc, "codebook/perplexity": ppl}, step)
        if tracker.should_plot(step):
            tracker.log_code_usage({"audio": n_a, "video": n_v}, step, plot=True)
    ckpt["tracking"] = tracker.state_dict()          # run id + anything not yet delivered
    tracker.log_tensor(codebook, "codebook/final.npy")
    tracker.end("FINISHED")                          # "KILLED" on preemption, "FAILED" on a crash

What a run looks like in MLflow (``mlflow_metric_key`` has the rules):
- the experiment carries ``mlflow.experimentKind = custom_model_development`` (MLflow's "Machine learning" kind);
  MLflow 3.17's UI reads the kind from its own "GenAI | Model training" switch instead (the address that
  trainer/programs/mlflow_ui.py prints sets it);
- metric names are grouped for the run page, which draws one chart per metric in sections named by the key up
  to its last "/" and sorts sections and charts by name (mlflow/server/js, ``getBaseChartAndSectionConfigs``).
  The loop's names become ``1 loss/total`` (alone in the first section), ``1 loss/terms/<term>``,
  ``2 codebook/step/<stat>`` (one optimizer step), ``2 codebook/window/<class>`` (the steps since the previous
  code-usage figure), ``3 data/…``, ``4 perf/…``, ``5 optim/…``; the numbers put the sections in reading order.
  ``eval/…``, ``paper/…`` and MLflow's ``system/…`` keep their names. <run_dir>/metrics.jsonl keeps the loop's
  own names;
- the code-usage figures are artifacts (``code_usage/step_<N>.png``, previewed in the Artifacts tab): MLflow 3.17's
  image charts (``log_image`` with a step) open on step 0 and print every param of the run over the picture;
- tags: MLflow's standard ones (user, source, git commit and branch: ``mlflow.tracking.context``) and a
  description (``mlflow.note.content``) written from the job config; the shard set as the run's dataset input
  (digest: the manifest's sha256);
- system metrics (CPU, memory, disk, network; GPU with ``nvidia-ml-py`` installed) from MLflow's own
  ``SystemMetricsMonitor`` in its thread, as ``system/…``;
- the default store is a sqlite file in the run directory with the artifacts beside it; MLflow records absolute
  artifact paths, so a moved or copied run directory is re-pointed when a tracker or
  ``python -m trainer.programs.mlflow_ui`` opens it (``relocate_local_store``).

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
  store ignores a point identical in key, step, timestamp and value;
- the system-metrics thread stops by itself when MLflow is unreachable (MLflow's behaviour); ``end`` waits
  for it at most about one HTTP attempt.
Why not ``mlflow``'s fluent API with async logging: its queue lives in a thread and dies with the process, while
this queue is bounded, survives a preemption in the checkpoint (``state_dict``) and never blocks a step.
The tracker raises only for caller bugs detected before any I/O (an unknown end status, a bad
artifact name, malformed code-usage counts, ``start()`` twice), never for tracking failures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import sqlite3
import subprocess
import threading
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
from trainer.code_usage import classify_code_usage, plot_code_usage
from trainer.config import flatten, to_dict
from trainer.configs.tracking import TrackingConfig

log = logging.getLogger(__name__)

# MLflow's limits (mlflow/utils/validation.py, 3.x): checked here so that a long value is shortened
# visibly instead of being rejected (or silently truncated) by the server.
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250
PARAMS_PER_REQUEST = 100
METRICS_PER_REQUEST = 1000

# The experiment kind MLflow's UI offers as "Machine learning" (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT in
# mlflow/server/js; the tag mlflow/demo/generators/traces.py sets to "genai_development" for GenAI experiments).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
RUN_NOTE_TAG = "mlflow.note.content"       # the run page's "Description" (mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE)
LOCAL_ARTIFACTS = "mlartifacts"            # artifact root of a sqlite store, next to the database file

RunStatus = Literal["FINISHED", "KILLED", "FAILED"]


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


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store (None for a server or another database)."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]).resolve() if tracking_uri.startswith(prefix) else None


def _local_artifact_root(tracking_uri: str) -> str | None:
    """Artifact root for experiments created in a server-less sqlite store: next to the database file.

    Without it MLflow would put them in ./mlruns of whatever the working directory is. For an HTTP
    server the server's own default (usually its proxied artifact store) applies.
    """
    db = _sqlite_file(tracking_uri)
    return (db.parent / LOCAL_ARTIFACTS).as_uri() if db is not None else None


def create_local_store(db: Path) -> None:
    """A new sqlite store at ``db``: a copy of an empty one that was migrated once per machine and MLflow version.

    MLflow brings every new database to its schema by running each of its migrations in turn (alembic), which took
    about a fifth of a tiny job's start-up (py-spy on ``trainer/main.py`` with ``run.max_steps=1``); a copy of the
    result is the same database. The copy is written atomically (several ranks or jobs may start at once).
    """
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmg-trainer"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        scratch = cache / f"{template.name}.{os.getpid()}.tmp"
        store = SqlAlchemyStore(f"sqlite:///{scratch}", (cache / LOCAL_ARTIFACTS).as_uri())
        store.engine.dispose()
        os.replace(scratch, template)
    db.parent.mkdir(parents=True, exist_ok=True)
    scratch = db.with_name(f"{db.name}.{os.getpid()}.tmp")
    shutil.copyfile(template, scratch)
    os.replace(scratch, db)


def relocate_local_store(db: str | Path) -> int:
    """Re-point the artifact paths of a sqlite store whose directory was moved or copied; returns rows changed.

    MLflow stores the absolute artifact location of every experiment, run and logged model (its SQL store resolves
    relative ones against the working directory: mlflow.utils.uri.resolve_uri_if_local), and has no way to move
    them (mlflow/mlflow#3144, #8226). The experiments the tracker creates keep their artifacts in ``mlartifacts``
    next to the database, so a location ``file://<old dir>/mlartifacts[/...]`` under another directory is the
    same tree at its new place: rewrite that prefix to this database's directory.
    """
    new_root = (Path(db).resolve().parent / LOCAL_ARTIFACTS).as_uri()
    # (table, key column, location column); logged_models exists from MLflow 3
    columns = (("experiments", "experiment_id", "artifact_location"), ("runs", "run_uuid", "artifact_uri"),
               ("logged_models", "model_id", "artifact_location"))
    changed = 0
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        old_roots = {loc for (loc,) in conn.execute("SELECT artifact_location FROM experiments")
                     if loc and loc.startswith("file://") and loc.endswith("/" + LOCAL_ARTIFACTS) and loc != new_root}
        for table, key, column in columns:
            if table not in tables:
                continue
            for row_key, location in conn.execute(f"SELECT {key}, {column} FROM {table}").fetchall():
                old = next((r for r in old_roots if location == r or (location or "").startswith(r + "/")), None)
                if old is not None:
                    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?",
                                 (new_root + location[len(old):], row_key))
                    changed += 1
    return changed


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


# The run page's sections, in reading order: the number in front of each name is what orders them (see the
# module docstring). ``codebook/<stat>`` from the loop is a statistic of one optimizer step (trainer/models/
# quantizer.py ``MMEMAQuantizer.step_``); ``codebook/window/<class>`` counts codes over the code-usage window.
METRIC_SECTIONS = {"loss": "1 loss", "codebook": "2 codebook", "data": "3 data", "perf": "4 perf", "optim": "5 optim"}
# The loop's names without a group: the loss, its terms (every name not listed here), and these.
UNGROUPED_METRICS = {"loss": "loss/total", "lr": "optim/lr",
                     "club_log_likelihood": "optim/club_log_likelihood",   # the CLUB estimators' fit, not in the loss
                     "pm_old_share": "data/pm_old_share"}   # COMET: mediator positions on inherited codes


def mlflow_metric_key(name: str) -> str:
    """The MLflow name of a metric the loop logs as ``name``: ``loss`` -> ``1 loss/total``, a loss term ``cpc`` ->
    ``1 loss/terms/cpc``, ``codebook/perplexity`` -> ``2 codebook/step/perplexity``, ``codebook/window/shared`` ->
    ``2 codebook/window/shared``, ``perf/clips_per_s`` -> ``4 perf/clips_per_s``, ``lr`` -> ``5 optim/lr``;
    other groups (``eval/``, ``paper/``, ``system/``) unchanged. Idempotent."""
    if "/" not in name:
        name = UNGROUPED_METRICS.get(name, f"loss/terms/{name}")
    group, _, rest = name.partition("/")
    if group not in METRIC_SECTIONS:
        return name
    if group == "loss" and rest != "total" and not rest.startswith("terms/"):
        rest = f"terms/{rest}"
    elif group == "codebook" and not rest.startswith(("step/", "window/")):
        rest = f"step/{rest}"
    return f"{METRIC_SECTIONS[group]}/{rest}"


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
    """Tag values as MLflow stores them (strings); a None value means "no such tag", not the text "None"."""
    return {clean_key(k): _shorten(str(v), MAX_TAG_VALUE_CHARS) for k, v in tags.items() if v is not None}


def _git_tags(repo_dir: Path) -> dict[str, str]:
    """Commit of the working tree that runs (MLflow's standard tag, shown as the run's source) and whether it is
    dirty; MLflow's own git context reads the repository of the entry script, which may be another one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, or no commit yet
        return {}
    return {"mlflow.source.git.commit": commit, "git_dirty": str(dirty).lower()}


def run_description(job: Mapping[str, Any]) -> str | None:
    """The run page's description of a main-job config tree (``JobConfig.to_dict()``); None for other trees.

    What ran on what, and how to read the charts: the sections follow ``METRIC_SECTIONS``.
    """
    if not {"task", "model", "run", "data"} <= set(job):
        return None
    model, run, data = job["model"], job["run"], job["data"]
    modalities = " + ".join(model.get("modalities") or [])
    codes = (model.get("quantizer") or {}).get("num_codes")
    init = f" Started from `{run['init_from']}`." if run.get("init_from") else ""
    return "\n".join([
        f"**{job['task']}** pretraining, phase `{run.get('phase')}`: {modalities} into one codebook of {codes} "
        f"codes; {run.get('max_steps')} optimizer steps of {data.get('batch_size')} clips per rank, "
        f"from {data.get('kind')} shards `{data.get('urls')}`.{init}",
        "",
        "Model metrics, in reading order:",
        f"- **{METRIC_SECTIONS['loss']}**: the weighted total; **…/terms**: each unweighted term (its weight is the "
        "param `model.loss.<term>`) and its parts per modality or modality pair.",
        f"- **{METRIC_SECTIONS['codebook']}/step**: codes used by this optimizer step's assignments, perplexity, "
        f"resets; **…/window**: codes classed by the modalities that used them since the previous code-usage "
        f"figure (every `tracking.plot_every` steps; the figures are in Artifacts, `code_usage/`).",
        f"- **{METRIC_SECTIONS['data']}**, **{METRIC_SECTIONS['perf']}**, **{METRIC_SECTIONS['optim']}**: samples "
        "seen and skipped, throughput, learning rate and the CLUB estimators' log-likelihood (trained apart from "
        "the loss). `eval/…`: downstream evaluations of this run's checkpoints.",
        "",
        "CPU, memory and GPU are in the System metrics tab. <run dir>/metrics.jsonl has the same numbers under the "
        "loop's names (`loss`, `cpc`, `codebook/perplexity`, ...).",
    ])


def shard_dataset(job: Mapping[str, Any]):
    """The shard set of a main-job config tree as an MLflow dataset (``mlflow.entities.Dataset``), or None.

    Digest: the first 16 hex digits of the manifest's sha256 (the shard writer lists every shard's name and
    sample count there, so new or rewritten shards change it), or of the URL pattern when there is no manifest
    to read (remote shards without ``data.manifest``). Profile: shards and samples.
    """
    from mlflow.entities import Dataset

    from trainer.data.manifest import ShardManifest
    from trainer.data.stream import expand_shard_urls

    data = job.get("data") if isinstance(job.get("data"), Mapping) else None
    if not data or data.get("kind") not in ("clips", "features") or not data.get("urls"):
        return None
    urls = expand_shard_urls(data["urls"])
    profile: dict[str, Any] = {"shards": len(urls)}
    try:
        manifest = ShardManifest.of_shards(urls, data.get("manifest") or "")
        digest = manifest.digest[:16]
        profile |= {"samples": sum(manifest.counts(urls)), "manifest": str(manifest.path)}
    except (OSError, ValueError):   # no manifest to read here: the job itself refuses what it cannot count
        digest = hashlib.sha256(data["urls"].encode()).hexdigest()[:16]
    local = ":" not in urls[0].split("/")[0]
    name = f"{Path(urls[0]).parent.name or 'shards'} ({data['kind']})" if local else f"{data['kind']} shards"
    return Dataset(name=name, digest=digest, source_type="local" if local else "uri",
                   source=json.dumps({"uri": data["urls"]}), profile=json.dumps(profile))


@contextlib.contextmanager
def _http_settings(cfg: TrackingConfig) -> Iterator[None]:
    """MLflow reads these per request; scope them to the tracker's calls and restore the caller's."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.http_max_retries),
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(cfg.http_timeout_s),
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
        """Create the run, or continue run ``run_id`` (or the one from ``load_state_dict``). A tag whose value is
        None is not set; ``resumed_from_step`` (the step a resumed job continues from) also starts its first
        code-usage window."""

    def log_config(self, cfg: Any, artifact_file: str = "config/resolved.yaml") -> None:
        """Flattened params of a config dataclass/mapping, plus the resolved config as a YAML artifact; for a main
        job's config also the run's description and its shard set as the dataset input."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params from a (nested) mapping; see ``mlflow_params`` for key/value limits."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Scalar metrics (floats or one-element tensors) at ``step``, named in MLflow by ``mlflow_metric_key``;
        queued, sent in batches."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Run tags; values are stringified, None values skipped."""

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        """Upload an existing file under ``artifact_dir`` of the run."""

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure (anything with ``savefig``) or PNG bytes, as ``artifact_file``."""

    def log_tensor(self, tensor: torch.Tensor, artifact_file: str) -> None:
        """A tensor as ``.npy`` (numpy, no pickle) or ``.pt`` (loads with ``weights_only=True``)."""

    def log_code_usage(self, counts: Mapping[str, Any], step: int, plot: bool = False) -> None:
        """``codebook/window/<class>`` and ``codebook/window/active`` metrics from per-modality counts accumulated
        since the previous call; with ``plot``, the figure too (artifact ``code_usage/step_<N>.png``, and the same
        file in ``<run_dir>/tracking/``)."""

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
        self._reopened = False         # the run existed before this job (system metrics continue its steps)
        self._run_ready = False
        self._started = False
        self._closed = False
        self._disabled = False
        self._params: dict[str, str] = {}            # queued
        self._sent_params: dict[str, str] = {}       # known to the server (MLflow params are immutable)
        self._tags: dict[str, str] = {}
        self._inputs: list[Any] = []                 # mlflow.entities.Dataset of the job's data, queued
        self._metrics: deque[tuple[str, float, int, int]] = deque()   # (key, value, timestamp ms, step)
        self._artifacts: list[tuple[str, str | None]] = []           # (local file, artifact dir)
        self._status: str | None = None
        self._dropped_metrics = self._dropped_artifacts = self._rejected = self._failed_attempts = 0
        self._connected = False
        self._next_attempt = 0.0
        self._retry_interval = cfg.retry_interval_s
        self._warned: set[str] = set()
        self._monitor = None    # mlflow's SystemMetricsMonitor once the run exists; False: off, or stopped
        self._usage_since = 0                        # last step of the previous code-usage window

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
        tags = dict(tags or {})
        self._usage_since = int(tags.get("resumed_from_step") or 0)
        self._tags.update(_tag_values(self._default_tags()))
        self._tags.update(_tag_values(tags))
        self._deliver()

    def log_config(self, cfg: Any, artifact_file: str = "config/resolved.yaml") -> None:
        tree = to_dict(cfg)
        if not isinstance(tree, Mapping):
            raise TypeError(f"log_config needs a config dataclass or mapping, got {type(cfg).__name__}")
        self._params.update(mlflow_params(tree))
        self._save_artifact(artifact_file, lambda path: path.write_text(yaml.safe_dump(dict(tree), sort_keys=False)))
        description = run_description(tree)
        if description and RUN_NOTE_TAG not in self._tags:
            self._tags[RUN_NOTE_TAG] = _shorten(description, MAX_TAG_VALUE_CHARS)
        try:
            dataset = shard_dataset(tree)
        except ValueError as err:   # a pattern that does not expand: the job reports it; the run just lacks it
            self._warn_once("dataset", f"data.urls not logged as the run's dataset: {err}")
            dataset = None
        if dataset is not None:
            self._inputs.append(dataset)
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
            self._metrics.append((clean_key(mlflow_metric_key(str(key))), value, timestamp, int(step)))
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
        window = f"steps {self._usage_since + 1}-{step}" if step > self._usage_since else f"step {step}"
        self._usage_since = step
        metrics = {f"codebook/window/{name}": n for name, n in summary.items()}
        metrics["codebook/window/active"] = usage.code_class.size - summary["unused"]
        if plot:
            run_name = self.cfg.run_name or self.run_dir.name
            title = f"{run_name}: code usage over {window} (step {step})"
            self._save_artifact(f"code_usage/step_{step:08d}.png",
                                lambda path: plot_code_usage(usage, path, title=title))
        self.log_metrics(metrics, step)

    def flush(self) -> bool:
        self._deliver(force=True)
        return not self._pending()

    def end(self, status: RunStatus = "FINISHED") -> None:
        if status not in ("FINISHED", "KILLED", "FAILED"):
            raise ValueError(f"run status must be FINISHED, KILLED or FAILED, got {status!r}")
        if self._closed:
            return
        self._stop_system_metrics()
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
        return bool(self._metrics or self._params or self._tags or self._inputs or self._artifacts or self._status
                    or not self._run_ready)

    # -- delivery -----------------------------------------------------------------------------------

    def _default_tags(self) -> dict[str, Any]:
        from mlflow.tracking.context.registry import resolve_tags

        tags: dict[str, Any] = resolve_tags()   # mlflow.user, mlflow.source.name/type, and git when it finds it
        tags["world_size"] = distributed.world_size()
        tags.update(_git_tags(Path(__file__).resolve().parent.parent))
        if os.environ.get("SLURM_JOB_ID"):
            tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        return tags

    def _deliver(self, force: bool = False) -> None:
        """Send the queue, in order run -> params -> tags -> inputs -> metrics -> artifacts -> status.

        Unless ``force``, nothing happens before ``_next_attempt``: ``flush_interval_s`` after a
        delivery, the (growing) retry interval after a failure.
        """
        if not self._started or self._closed or self._disabled:
            return
        now = time.monotonic()
        if not force and now < self._next_attempt:
            return
        try:
            with _http_settings(self.cfg):
                self._ensure_run()
                self._send_params()
                self._send_tags()
                self._send_inputs()
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
        if self._monitor is None and self.cfg.system_metrics and self._status is None:
            self._start_system_metrics()

    def _ensure_run(self) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if self._client is None:
            db = _sqlite_file(self.tracking_uri)
            if db is not None and not db.is_file():
                create_local_store(db)
            elif db is not None and relocate_local_store(db):
                log.warning("MLflow store %s was moved: its artifact paths now point to %s", db,
                            db.parent / LOCAL_ARTIFACTS)
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
                self._reopened = True
            self._resuming = False
        if self._run_id is None:
            run = self._client.create_run(self._experiment_id(), run_name=self.cfg.run_name or self.run_dir.name)
            self._run_id = run.info.run_id
        self._run_ready = True

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(self.cfg.experiment)
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in experiment.tags:   # an older run's experiment; a kind set by hand stays
                self._client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
            return experiment.experiment_id
        try:
            return self._client.create_experiment(self.cfg.experiment,
                                                  artifact_location=_local_artifact_root(self.tracking_uri),
                                                  tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND})
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

    def _send_inputs(self) -> None:
        """``mlflow.log_input`` through the client: the run's training data, shown under Datasets (a dataset
        already logged to the run, as on a resume, is stored once)."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        while self._inputs:
            try:
                self._client.log_inputs(self._run_id, [DatasetInput(self._inputs[0],
                                                                    [InputTag(MLFLOW_DATASET_CONTEXT, "train")])])
            except Exception as err:  # noqa: BLE001 - sorted into rejected (drop) or transient (re-raise)
                if not _is_rejection(err):
                    raise
                self._reject("dataset", 1, err)
            self._inputs.pop(0)

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

    def _start_system_metrics(self) -> None:
        """MLflow's system-metrics thread for this run (what ``mlflow.start_run(log_system_metrics=True)``
        starts); on a reopened run its steps continue after the last ones logged."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self._monitor = SystemMetricsMonitor(self._run_id, sampling_interval=self.cfg.system_metrics_interval_s,
                                                 resume_logging=self._reopened, tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as err:  # noqa: BLE001 - psutil missing, or the store unreadable right now: no system tab
            self._monitor = False   # tried: not again
            self._warn_once("system-metrics", f"MLflow system metrics are off for this run: {err}")

    def _stop_system_metrics(self) -> None:
        """Stop the monitor (it logs what it sampled). Its thread may be in an MLflow request with MLflow's own
        retries (minutes when the server is down): wait for it at most about one of the tracker's attempts."""
        monitor, self._monitor = self._monitor, False
        if not monitor:
            return
        with _http_settings(self.cfg):
            stopper = threading.Thread(target=monitor.finish, name="stop-system-metrics", daemon=True)
            stopper.start()
            stopper.join(self.cfg.system_metrics_interval_s + self.cfg.http_timeout_s * (self.cfg.http_max_retries + 2))

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


def log_metrics_to_run(cfg: TrackingConfig, run_dir: str | Path, run_id: str, metrics: Mapping[str, float],
                       step: int) -> bool:
    """Add ``metrics`` at ``step`` to the existing run ``run_id`` (in the store ``cfg`` and ``run_dir`` resolve to),
    leaving its status and end time alone: how an evaluation puts its numbers on the pretraining run as well as on
    its own child run. One bounded attempt; a failure warns and returns False."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = resolve_tracking_uri(cfg, run_dir)
    timestamp = int(time.time() * 1000)
    points = [Metric(clean_key(mlflow_metric_key(k)), float(v), timestamp, int(step)) for k, v in metrics.items()]
    try:
        with _http_settings(cfg):
            client = MlflowClient(uri)
            for i in range(0, len(points), METRICS_PER_REQUEST):
                client.log_batch(run_id, metrics=points[i:i + METRICS_PER_REQUEST])
    except Exception as err:  # noqa: BLE001 - the numbers are in the child run and the report files anyway
        warnings.warn(f"could not add {len(points)} metrics to MLflow run {run_id} at {uri}: {err}",
                      TrackingWarning, stacklevel=2)
        return False
    return True


__all__ = ["TrackingConfig", "TrackingWarning", "Tracker", "NullTracker", "TrackerStats", "create_tracker",
           "resolve_tracking_uri", "mlflow_params", "mlflow_metric_key", "clean_key", "relocate_local_store",
           "run_description", "shard_dataset", "log_metrics_to_run"]

