"""What the MLflow run page of a training run shows, as data: metric names grouped into the page's sections, params
within MLflow's limits, the job's description and its shard set as the dataset input (trainer/tracking.py logs them).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.configs.load import flatten, to_dict

MAX_PARAM_VALUE_CHARS, MAX_TAG_VALUE_CHARS, MAX_KEY_CHARS = 6000, 8000, 250   # mlflow/utils/validation.py (3.x)


def clean_key(key: str) -> str:
    """A key MLflow accepts: allowed characters, no path tricks, <= 250 characters (a cut key keeps a hash of all)."""
    cleaned = posixpath.normpath(re.sub(r"[^/\w.\- :]", "_", str(key))).lstrip("/")   # MLflow refuses a//b, ../a
    if cleaned in ("", ".") or cleaned.startswith(".."):
        cleaned = "_" + cleaned.replace("/", "_")
    if len(cleaned) > MAX_KEY_CHARS:
        cleaned = f"{cleaned[:MAX_KEY_CHARS - 11]}_{hashlib.sha1(str(key).encode()).hexdigest()[:10]}"
    return cleaned


# The run page draws one chart per metric in sections named by the key up to its last "/", sorted by name
# (mlflow/server/js, ``getBaseChartAndSectionConfigs``): the numbers put the sections in reading order.
# ``codebook/<stat>`` is a statistic of one optimizer step (trainer/models/quantizer.py ``MMEMAQuantizer.step_``);
# ``codebook/window/<class>`` counts codes over the code-usage window.
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
    group, _, rest = (name if "/" in name else UNGROUPED_METRICS.get(name, f"loss/terms/{name}")).partition("/")
    if group not in METRIC_SECTIONS:
        return name
    if group == "loss" and rest != "total" and not rest.startswith("terms/"):
        rest = f"terms/{rest}"
    elif group == "codebook" and not rest.startswith(("step/", "window/")):
        rest = f"step/{rest}"
    return f"{METRIC_SECTIONS[group]}/{rest}"


def shorten(value: str, limit: int) -> str:
    marker = f"...[{len(value) - limit} more chars cut]"
    return value if len(value) <= limit else value[:limit - len(marker)] + marker


def mlflow_params(params: Mapping[str, Any]) -> dict[str, str]:
    """A (nested) mapping as MLflow params: clean unique keys (a clash gets ``_2``, ``_3``...), values <= 6000
    chars, cut with a visible marker (the full config is an artifact)."""
    out: dict[str, str] = {}
    for key, value in flatten(to_dict(params)).items():
        name, n = clean_key(key), 1
        while name in out:
            n += 1
            name = clean_key(key)[:MAX_KEY_CHARS - len(f"_{n}")] + f"_{n}"
        out[name] = shorten(str(value), MAX_PARAM_VALUE_CHARS)
    return out


def git_tags() -> dict[str, str]:
    """The run's Source: this checkout's commit (MLflow's own git context reads the entry script's repository) and
    whether it is dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        return {"mlflow.source.git.commit": git("rev-parse", "HEAD"),
                "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()}
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, or no commit yet
        return {}


def run_description(job: Mapping[str, Any]) -> str | None:
    """The run page's description of a main-job config tree (``JobConfig.to_dict()``); None for other trees."""
    if not {"task", "model", "run", "data"} <= set(job):
        return None
    model, run, data = job["model"], job["run"], job["data"]
    init = f" Started from `{run['init_from']}`." if run.get("init_from") else ""
    return (f"**{job['task']}** pretraining, phase `{run.get('phase')}`: {' + '.join(model.get('modalities') or [])} "
            f"into one codebook of {(model.get('quantizer') or {}).get('num_codes')} codes; {run.get('max_steps')} "
            f"optimizer steps of {data.get('batch_size')} clips per rank, from {data.get('kind')} shards "
            f"`{data.get('urls')}`.{init}\n\nModel metrics, in reading order:\n"
            f"- **{METRIC_SECTIONS['loss']}**: the weighted total; **…/terms**: each unweighted term (its weight is "
            "the param `model.loss.<term>`) and its parts per modality or modality pair.\n"
            f"- **{METRIC_SECTIONS['codebook']}/step**: codes used by this optimizer step's assignments, perplexity, "
            "resets; **…/window**: codes classed by the modalities that used them since the previous code-usage "
            "figure (every `tracking.plot_every` steps: the image `code_usage`, with a step slider).\n"
            f"- **{METRIC_SECTIONS['data']}**, **{METRIC_SECTIONS['perf']}**, **{METRIC_SECTIONS['optim']}**: samples "
            "seen and skipped, throughput, learning rate and the CLUB estimators' log-likelihood (trained apart from "
            "the loss). `eval/…`: downstream evaluations of this run's checkpoints (each one's table: its child run "
            "`evaluate-step_N`, Artifacts, `evaluation/results.json`).\n\nCPU, memory and GPU are in the "
            "System metrics tab. <run dir>/metrics.jsonl has the same numbers under the loop's names.")


def shard_dataset(job: Mapping[str, Any]):
    """The shard set of a main-job config tree as an MLflow ``Dataset``, or None. Digest: 16 hex digits of the
    manifest's sha256 (it lists every shard and its samples), else of the URL pattern; profile: shards, samples."""
    from mlflow.entities import Dataset

    from trainer.data.manifest import ShardManifest
    from trainer.data.sources import expand_shard_urls

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
