"""MLflow tracking through MLflow's own API, never a reason to stop training (docs/mlflow.md shows the run)::

    os.environ.update(mlflow_environment(cfg.tracking, run_dir))   # process start-up (trainer.runtime)
    tracker = create_tracker(cfg.tracking, run_dir, is_main=rank == 0)   # does nothing on other ranks
    tracker.start(tags={"phase": "pretrain_av"}, resumed_from_step=None, logged=rows)   # rows of metrics.jsonl
    tracker.log_config(job); tracker.log_metrics({"loss": loss}, step); tracker.end("FINISHED")   # or KILLED, FAILED

``mlflow.start_run(log_system_metrics=...)`` opens the run; metrics, params and tags go through MLflow's async
logging (its queue, batching, HTTP retries). MLflow reads its settings per request from the environment, set once at
start-up (``mlflow_environment``): a synchronous call blocks for about ``http_timeout_s * (http_max_retries + 1)`` at
most. The first failure warns once and turns the tracker off for the job. ``<run_dir>/metrics.jsonl`` is the durable
record, the tracker keeps only the run id (``tracking/run.json``): a resumed job continues the run, logs the rows of
metrics.jsonl it lacks (lost in MLflow's queue to a kill -9, or to MLflow being down) and skips the points it has past
the resume step (a crashed job's, after its last checkpoint): the history equals metrics.jsonl. A sqlite store records
artifacts as ``mlflow-artifacts:/...`` (as ``mlflow server`` does), kept in ``mlartifacts/`` beside it and served
from there by ``cmg ui``: a moved run directory opens as it is.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from trainer.configs.load import to_dict
from trainer.configs.tracking import TrackingConfig
from trainer.run_page import (
    MAX_TAG_VALUE_CHARS, clean_key, git_tags, mlflow_metric_key, mlflow_params, run_description, shard_dataset, shorten,
)

# MLflow's UI calls this experiment kind "Machine learning" (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, mlflow/server/js)
EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
RUN_NOTE_TAG = "mlflow.note.content"       # the run page's "Description" (mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE)
LOCAL_ARTIFACTS = "mlartifacts"            # a sqlite store's artifacts, beside it (`mlflow server`'s default name)
RUN_FILE = "run.json"                      # <run_dir>/tracking/run.json: {"run_id": ...}
RunStatus = Literal["FINISHED", "KILLED", "FAILED"]


class TrackingWarning(RuntimeWarning):
    """Tracking degraded (MLflow unreachable, data not delivered); training goes on."""


def resolve_tracking_uri(cfg: TrackingConfig, run_dir: str | Path) -> str:
    """``cfg.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///`` + the run directory's mlflow.db."""
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve()}/mlflow.db"


def local_artifacts(tracking_uri: str) -> Path | None:
    """Where a ``sqlite:///`` store's ``mlflow-artifacts:/`` live (``mlartifacts`` beside it); None for a server."""
    sqlite = tracking_uri.startswith("sqlite:///")
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / LOCAL_ARTIFACTS if sqlite else None


def store_client(tracking_uri: str):
    """MLflow's client of a store. For a sqlite store, one whose run artifacts (``mlflow-artifacts:/...``) are read
    and written in ``mlartifacts/`` beside it, where ``cmg ui`` serves them from: MLflow's own client resolves that
    scheme only through a server. Its ``log_image``/``log_table`` build on the three artifact methods overridden here
    (mlflow/tracking/client.py)."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if (root := local_artifacts(tracking_uri)) is None:
        return MlflowClient(tracking_uri)

    class LocalStoreClient(MlflowClient):
        def _local_repository(self, run_id: str):
            uri = self.get_run(run_id).info.artifact_uri
            if not uri.startswith("mlflow-artifacts:"):   # an older run's own location: MLflow resolves it
                return None
            return get_artifact_repository((root / uri.removeprefix("mlflow-artifacts:").lstrip("/")).as_uri())

        def log_artifact(self, run_id, local_path, artifact_path=None):
            repository = self._local_repository(run_id)
            return repository.log_artifact(local_path, artifact_path) if repository else \
                super().log_artifact(run_id, local_path, artifact_path)

        def list_artifacts(self, run_id, path=None):
            repository = self._local_repository(run_id)
            return repository.list_artifacts(path) if repository else super().list_artifacts(run_id, path)

        def download_artifacts(self, run_id, path, dst_path=None):
            repository = self._local_repository(run_id)
            return repository.download_artifacts(path, dst_path) if repository else \
                super().download_artifacts(run_id, path, dst_path)

    return LocalStoreClient(tracking_uri)


def create_local_store(tracking_uri: str) -> None:
    """A new sqlite store: a copy of an empty one migrated once per machine and MLflow version. MLflow brings a new
    database to its schema by running each of its migrations (alembic; about 2 s of CPU a job here); the copy is
    the same database, written atomically (several jobs may start at once). An existing store is left as it is."""
    import mlflow

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if not tracking_uri.startswith("sqlite:///") or db.exists():
        return
    template = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmg-trainer" / \
        f"mlflow-{mlflow.__version__}-empty.db"
    if not template.is_file():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        template.parent.mkdir(parents=True, exist_ok=True)
        scratch = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        SqlAlchemyStore(f"sqlite:///{scratch}", template.parent.as_uri()).engine.dispose()
        os.replace(scratch, template)
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, scratch := db.with_name(f"{db.name}.{os.getpid()}.tmp"))
    os.replace(scratch, db)


def mlflow_environment(cfg: TrackingConfig, run_dir: str | Path) -> dict[str, str]:
    """MLflow's process settings for ``cfg``: environment variables it reads per request, to set at start-up. The
    tracking URI becomes ``$MLFLOW_TRACKING_URI``: a later job of this process without ``tracking_uri`` uses it too."""
    return {"MLFLOW_TRACKING_URI": resolve_tracking_uri(cfg, run_dir),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(cfg.http_timeout_s),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.http_max_retries),
            "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": str(cfg.flush_interval_s),
            "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": str(cfg.system_metrics_interval_s),
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}   # keeps the progress bar clean


def ui_url(base: str, experiment_id: str, run_id: str | None = None, tab: str = "model-metrics") -> str:
    """The UI page of a run (its ``tab``) or of an experiment's runs, in MLflow's "Model training" mode.

    MLflow 3.17's UI takes the experiment kind from its "GenAI | Model training" switch (the URL's ``workflowType``,
    else the browser's last choice, GenAI by default), not from the ``mlflow.experimentKind`` tag: a first visit
    without it lands on the GenAI overview. The link carries the switch.
    """
    page = f"experiments/{experiment_id}/runs/{run_id}/{tab}" if run_id else f"experiments/{experiment_id}/runs"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


class Tracker:
    """MLflow tracking of one run (the module docstring has the delivery and failure policy). An inactive tracker
    (ranks other than 0, ``enabled: false``) does nothing; ``should_log``/``should_plot`` answer the same on every
    rank, so collectives on logging steps stay matched."""

    def __init__(self, cfg: TrackingConfig, run_dir: str | Path, active: bool = True) -> None:
        self.cfg, self.active = cfg, active
        self.run_dir, self.local_dir = Path(run_dir), Path(run_dir) / "tracking"   # the artifacts' files
        self.tracking_uri = resolve_tracking_uri(cfg, run_dir)
        self._run = self._client = None                 # MLflow's run and client, once started
        self._open = self._on = False                    # the run is open / and MLflow answered so far
        self._pending: list[Any] = []                    # RunOperations of the async batches
        self._have: dict[str, set[int]] = {}             # per key, the steps the run had past the resume step
        self._warned: set[str] = set()
        self._usage_since = 0                            # last step of the previous code-usage window

    @property
    def run_id(self) -> str | None:
        return self._run.info.run_id if self._run is not None else None

    def address(self) -> str | None:
        """Where to look at the run: its page on an MLflow server, else its id, its store and how to open it (None:
        no run was opened)."""
        if self._run is None:
            return None
        if self.tracking_uri.startswith(("http://", "https://")):
            return ui_url(self.tracking_uri, self._run.info.experiment_id, self.run_id)
        in_run_dir = self.tracking_uri == f"sqlite:///{self.run_dir.resolve()}/mlflow.db"   # the default store
        opener = f"; open it: cmg ui {self.run_dir}" if in_run_dir else ""
        return f"run {self.run_id} in {self.tracking_uri}{opener}"

    def should_log(self, step: int) -> bool:
        return step % self.cfg.log_every == 0

    def should_plot(self, step: int) -> bool:
        return step % self.cfg.plot_every == 0

    def start(self, tags: Mapping[str, Any] | None = None, resumed_from_step: int | None = None,
              logged: Sequence[Mapping[str, float]] = ()) -> None:
        """Open a new run, or with ``resumed_from_step`` the one in ``<run_dir>/tracking/run.json`` (a new one if the
        store lacks it), which first gets the rows of ``logged`` (``{"step": N, name: value...}``) it lacks."""
        import mlflow
        from mlflow.entities import Metric
        from trainer import distributed

        if not self.active:
            return
        if self._run is not None or mlflow.get_tracking_uri() != self.tracking_uri:
            raise RuntimeError(f"Tracker.start() twice, or MLflow's tracking URI {mlflow.get_tracking_uri()} is not "
                               f"{self.tracking_uri} (set mlflow_environment() at start-up)")
        self._usage_since = resumed_from_step or 0
        tags = git_tags() | {"world_size": distributed.world_size(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                              **(tags or {}), "resumed_from_step": resumed_from_step}
        saved = self.local_dir / RUN_FILE
        try:
            run_id = json.loads(saved.read_text())["run_id"] if resumed_from_step is not None and saved.is_file() \
                else None
            create_local_store(self.tracking_uri)
            self._client = store_client(self.tracking_uri)
            if run_id is not None and not self._resumable(run_id):   # another store now, or a deleted run
                tags["resumed_from_missing_run"], run_id = run_id, None
            self._run = mlflow.start_run(run_id, None if run_id else self._experiment_id(), nested=True,
                                         run_name=None if run_id else self.cfg.run_name or self.run_dir.name,
                                         tags=self._tags(tags), log_system_metrics=self.cfg.system_metrics)
            self._open = self._on = True
            if run_id is not None:   # the steps the run has of metrics.jsonl's keys and of its own (no system/)
                self.set_tags({"resume_count": int(self._run.data.tags.get("resume_count", "0")) + 1})
                keys = {clean_key(mlflow_metric_key(k)) for row in logged for k in row if k != "step"}
                self._have = {key: {m.step for m in self._client.get_metric_history(run_id, key)} for key in
                              keys | {k for k in self._run.data.metrics if not k.startswith("system/")}}
            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[
                Metric(key, float(v), now, row["step"]) for row in logged for k, v in row.items() if k != "step"
                if row["step"] not in self._have.get(key := clean_key(mlflow_metric_key(k)), ())])
            self._have = {k: {s for s in steps if s > (resumed_from_step or 0)} for k, steps in self._have.items()}
            self.local_dir.mkdir(parents=True, exist_ok=True)
            (self.local_dir / RUN_FILE).write_text(json.dumps({"run_id": self.run_id}) + "\n")
        except Exception as err:  # noqa: BLE001 - whatever MLflow raises, training goes on
            self._fail(err)

    def _resumable(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False

    def _experiment_id(self) -> str:
        """The experiment, created with its kind (and in a sqlite store its movable artifact root) if missing."""
        from mlflow.exceptions import MlflowException

        name = self.cfg.experiment
        location = "mlflow-artifacts:/" + re.sub(r"[^\w.-]", "_", name) if local_artifacts(self.tracking_uri) else None
        if (experiment := self._client.get_experiment_by_name(name)) is None:
            try:
                return self._client.create_experiment(name, location, {EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND})
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":   # another job created it just now
                    raise
                experiment = self._client.get_experiment_by_name(name)
        if EXPERIMENT_KIND_TAG not in experiment.tags:   # an older run's experiment; a kind set by hand stays
            self._client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
        return experiment.experiment_id

    def log_config(self, cfg: Any, artifact_file: str = "config/resolved.yaml") -> None:
        """Params of a config, the resolved config as YAML; for a main job the description and the dataset."""
        import yaml
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if not isinstance(tree := to_dict(cfg), Mapping):
            raise TypeError(f"log_config needs a config dataclass or mapping, got {type(cfg).__name__}")
        self.log_params(tree)
        self._save(artifact_file, lambda path: path.write_text(yaml.safe_dump(dict(tree), sort_keys=False)))
        self.set_tags({RUN_NOTE_TAG: run_description(tree)})
        try:
            dataset = shard_dataset(tree) if self._on else None
        except ValueError as err:   # a pattern that does not expand: the job reports it; the run just lacks it
            return self._warn("dataset", f"data.urls not logged as the run's dataset: {err}")
        if dataset is not None:
            self._call(lambda: self._client.log_inputs(
                self.run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "train")])]))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params from a (nested) mapping (``mlflow_params``); those a resumed run has keep their first values."""
        from mlflow.entities import Param

        params, had = mlflow_params(params), self._run.data.params if self._run is not None else {}
        if changed := sorted(k for k, v in params.items() if had.get(k, v) != v):   # MLflow's params are immutable
            self._warn("params", f"params differ from those already logged in run {self.run_id} and are kept at "
                       f"their first values: {', '.join(changed)}")
            self.set_tags({"params_changed": ", ".join(changed)})
        self._batch(params=[Param(k, v) for k, v in params.items() if k not in had])

    def log_metrics(self, metrics: Mapping[str, Any], step: int, run_id: str | None = None) -> None:
        """Scalars (floats, one-element tensors) at ``step``, named by ``mlflow_metric_key``; to this run, or to the
        run ``run_id`` of its store (an evaluation puts its numbers on the pretraining run too)."""
        from mlflow.entities import Metric

        now, points = int(time.time() * 1000), []
        for name, value in metrics.items():
            if step not in self._have.get(key := clean_key(mlflow_metric_key(str(name))), ()):
                points.append(Metric(key, float(value), now, int(step)))
        self._batch(run_id, metrics=points)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Run tags: values as strings, a None value skipped."""
        from mlflow.entities import RunTag

        self._batch(tags=[RunTag(k, v) for k, v in self._tags(tags).items()])

    _tags = staticmethod(lambda tags: {clean_key(k): shorten(str(v), MAX_TAG_VALUE_CHARS) for k, v in tags.items()
                                       if v is not None})   # tag values as MLflow keeps them; None: no such tag

    def _batch(self, run_id: str | None = None, **entities: Any) -> None:
        if self._on and any(entities.values()):   # MLflow's RunOperations: what flush waits for
            operations = self._call(self._client.log_batch, run_id or self.run_id, **entities, synchronous=False)
            self._pending += [operations] if operations is not None else []

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        """Upload an existing file into ``artifact_dir`` of the run."""
        if self.active and not Path(local_path).is_file():
            raise ValueError(f"artifact file not found: {local_path}")
        self._call(lambda: self._client.log_artifact(self.run_id, str(local_path), artifact_dir))

    def log_table(self, columns: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        """A table (column name -> values) as MLflow's table artifact (``mlflow.log_table``: JSON that the
        Artifacts tab shows as a table)."""
        if self.active:
            self._call(lambda: self._client.log_table(self.run_id, dict(columns), artifact_file))

    def log_tensor(self, tensor: Any, artifact_file: str) -> None:
        """A tensor as float32 ``.npy`` (loads without pickle)."""
        import numpy as np

        if not artifact_file.endswith(".npy"):
            raise ValueError(f"log_tensor saves .npy files, got '{artifact_file}'")
        self._save(artifact_file, lambda path: np.save(path, tensor.detach().float().cpu().numpy(), allow_pickle=False))

    def log_code_usage(self, counts: Mapping[str, Any], step: int, plot: bool = False) -> None:
        """``codebook/window/<class>`` and ``…/active`` from per-modality counts since the previous call; with
        ``plot`` the figure, written to ``<run_dir>/tracking/code_usage/step_<N>.png`` and logged as MLflow's image
        ``code_usage`` at ``step`` (``mlflow.log_image``: the run page's Model metrics show it with a step slider)."""
        from trainer.code_usage import classify_code_usage, plot_code_usage

        if not self.active:
            return
        usage = classify_code_usage(counts, self.cfg.usage_dominance)
        summary = usage.summary()
        window = f"steps {self._usage_since + 1}-{step}" if step > self._usage_since else f"step {step}"
        self._usage_since = step
        if plot:
            title = f"{self.cfg.run_name or self.run_dir.name}: code usage over {window} (step {step})"
            path = self._write(f"code_usage/step_{step:08d}.png", lambda path: plot_code_usage(usage, path,
                                                                                              title=title))
            if path is not None and self._on:
                from PIL import Image

                with Image.open(path) as image:
                    self._call(lambda: self._client.log_image(self.run_id, image, key="code_usage", step=step,
                                                              synchronous=True))
        self.log_metrics({**{f"codebook/window/{name}": n for name, n in summary.items()},
                          "codebook/window/active": usage.code_class.size - summary["unused"]}, step)

    def _save(self, artifact_file: str, write: Any) -> None:
        """``write(path)`` the file into ``<run_dir>/tracking/`` and upload it as ``artifact_file``."""
        if (path := self._write(artifact_file, write)) is not None:
            self._call(lambda: self._client.log_artifact(self.run_id, str(path),
                                                         posixpath.dirname(artifact_file) or None))

    def _write(self, local_file: str, write: Any) -> Path | None:
        """``write(path)`` the file ``<run_dir>/tracking/<local_file>``; its path, None if inactive or not written."""
        if not self.active:
            return None
        path = self.local_dir / local_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
        except OSError as err:
            return self._warn(f"write:{path.parent}", f"could not write tracking file {path}: {err}; skipped")
        return path

    def flush(self) -> bool:
        """Send MLflow's async queue now and wait for it; True if every batch so far was delivered."""
        import mlflow

        pending, self._pending, failed = self._pending, [], 0
        if pending:
            mlflow.flush_async_logging()
        for operations in pending:
            try:
                operations.wait()
            except Exception:  # noqa: BLE001 - MLflow gave up on the batch after its retries (and logged why)
                failed += 1
        if failed:
            self._warn("async", f"{failed} metric batches of run {self.run_id} did not reach MLflow at "
                       f"{self.tracking_uri}; the next resume of this run directory re-delivers metrics.jsonl")
        return not failed

    def end(self, status: RunStatus = "FINISHED") -> None:
        """Deliver what is queued and close the run with ``status`` (MLflow's end also stops its system metrics)."""
        if status not in ("FINISHED", "KILLED", "FAILED"):
            raise ValueError(f"run status must be FINISHED, KILLED or FAILED, got {status!r}")
        import mlflow

        if self._open:
            self._open = False
            self.flush()
            self._on = True   # tried even after a failure: MLflow's end_run also stops its system-metrics thread
            self._call(mlflow.end_run, status)
            self._on = False

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``function(...)`` while MLflow answers; the first failure warns once and turns this tracker off."""
        try:
            return function(*args, **kwargs) if self._on else None
        except Exception as err:  # noqa: BLE001 - whatever MLflow raises, training goes on
            self._fail(err)

    def _fail(self, err: Exception) -> None:
        self._on = False
        self._warn("down", f"MLflow at {self.tracking_uri} failed ({type(err).__name__}: {err}); this job logs no "
                   "more to it, training goes on (metrics.jsonl has every logged step; a resume delivers them)")

    def _warn(self, topic: str, message: str) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            warnings.warn(message, TrackingWarning, stacklevel=3)


def create_tracker(cfg: TrackingConfig, run_dir: str | Path, *, is_main: bool) -> Tracker:
    """A tracker, active on the main process when tracking is enabled."""
    return Tracker(cfg, run_dir, active=cfg.enabled and is_main)
