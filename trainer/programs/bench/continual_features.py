"""Synthetic "seed 004 Table 1": continual phases VT -> AT -> IT, DCID fine-tuned sequentially vs DCID+COMET.

    python -m trainer.programs.bench.continual_features [--seeds 0,1,2,3] [--methods dcid,comet] [--steps 800]
                                               [--jobs 2] [--world default] [--set adapter.freeze_carried=false]
                                               [--json out.json] [--mlflow DIR]

Data: the fidelity generator's world (``trainer.programs.bench.synthetic_features``: K event classes shared by every
modality, per-clip nuisance, per-modality random rendering) extended by composition (``ContinualWorld``) with
an image-like modality (a still: the clip's event latent held for every segment, rendered by its own network)
and a speech-like one (the caption's words spoken: each token's word vector through a speaker-dependent
network, aligned with the caption's tokens). Captions are the generator's prompts, padded to T tokens. Each
phase pairs one modality with text and sees only its own corpus (new clips of the same world): video–text,
audio–text, image–text (``--order`` changes it, e.g. vt,st,at).

Each method trains the phases in this process as the main job chains them: every phase is a main job run by
``trainer.loop.train_in_memory`` (``trainer.programs.bench.jobs``) whose final checkpoint (model.pt, meta.json,
task_extra.pt) the next phase starts from through ``run.init_from`` (``trainer.checkpoint.load_init_state_`` and
``COMETTask.begin_phase_``; the Fisher of EWC comes from the loop's ``end_phase_`` hook). After each phase
the frozen model is evaluated on a labelled downstream corpus of the same world (train/val/test splits):
- unseen pairs (Table 1): AVE-style classification (accuracy) and AVVP-style localisation (micro F1), V→A and
  A→V, and AVE→AVVP (classification heads trained on clip labels, scored per segment on a second corpus),
  with ``trainer.eval.probes`` (epoch chosen on the source modality's val split);
- seen pairs: zero-shot class-level retrieval X↔text (precision@1/5/10: the share of retrieved clips of the
  query's event class, mean of both directions; captions only name the event, so a clip's own caption is no
  better a match than any of its class) with clip-level similarity (cosine of the clips' mean code vectors:
  captions and segments are not aligned in time); forgetting = the retrieval right after a pair's own phase
  minus the same retrieval after a later phase.

Methods (every one shares the model sizes, schedule and seeds): ``dcid`` = COMETConfig with the adapter,
replay and EWC off (Uni-Code, carrying earlier modalities' encoders for evaluation), ``comet`` = DCID+COMET
(6 experts, gate loss, EWC, K2 new codes and pseudo-modality replay per later phase), and the Table 6
ablations ``comet_no_sl`` (no specific layers), ``comet_no_moe`` (no adapter, so no gate/EWC/SL either: the
paper's "w/o MoE" row; PM and expansion stay), ``comet_no_pm``, ``comet_single`` (MoE -> one expert),
``comet_no_gate``, ``comet_no_ewc`` (``--methods``; the default runs ``dcid,comet``, the Table 1 pair).
Bench model (as trainer.programs.bench.fidelity, for one CPU core): D = 64, M = 64 codes (+32 per later phase for
COMET), d̄ = 32, AdamW lr 1e-3, batch 64, 800 steps per phase, N_re = 50; both methods use COMETConfig's
non-negative CLUB bound. Every (method, seed) runs in its own subprocess; the default (one seed, 2 at a time)
takes about 2–4 minutes on this 2-core machine, depending on its load. The targets are checked on the mean over
``--seeds``: single seeds disagree by up to ±15 points here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.configs.load import to_dict
from trainer.eval.frozen_codes import LabelledFeatures, encode_split, split_indices
from trainer.eval.probes import (
    CodeSplit, class_retrieval, classification_probe, code_agreement, cross_dataset_probe, localisation_probe,
)
from trainer.configs.eval import ProbeConfig
from trainer.configs.model import AdapterConfig, CLUBConfig, COMETConfig, EncoderConfig, QuantizerConfig, ReplayConfig
from trainer.models.comet import COMETModel
from trainer.loop import last_logged
from trainer.programs.bench.parsers import continual_features_parser
from trainer.programs.bench.jobs import bench_job, pretrain, with_club_lr, with_overrides
from trainer.programs.bench.synthetic_features import SyntheticSet, SyntheticWorld, world_config
from trainer.programs.harness import fan_out, mean, run_json_child, verdict
from trainer.programs.bench.config import ContinualConfig, ContinualWorldConfig, METHODS, Method, PAIR_NAMES

LABELLED = ("video", "audio", "image")          # modalities with per-segment event labels
DIRECTIONS = (("video", "audio"), ("audio", "video"))
TABLE1_TASKS = ("classification", "localisation", "cross_dataset")


# ---------------------------------------------------------------------- data


class ContinualWorld:
    """The fidelity world plus image- and speech-like renderers; ``sample`` gives every modality of a clip."""

    def __init__(self, cfg: ContinualWorldConfig):
        self.cfg = cfg
        self.base = SyntheticWorld(cfg.base)
        b = cfg.base
        g = torch.Generator().manual_seed(b.world_seed + 7)
        self.renderers = {"image": _random_network(b.event_dim + b.nuisance_dim, b.render_hidden, cfg.image_dim, g),
                          "speech": _random_network(b.text_dim + b.nuisance_dim, b.render_hidden, cfg.speech_dim, g)}

    def sample(self, num_clips: int, seed: int) -> SyntheticSet:
        """``num_clips`` clips with audio, video, image, text (+ mask) and speech features; labels of the
        labelled modalities (image: the clip's event in every segment)."""
        b = self.base.cfg
        data = self.base.sample(num_clips, seed)
        g = torch.Generator().manual_seed(seed + 10_000)
        n, t = num_clips, b.segments
        text, mask = data.features["text"], data.features["text_mask"]
        if text.shape[1] > t:
            raise ValueError(f"captions of {text.shape[1]} words do not fit T={t} segments")
        data.features["text"] = F.pad(text, (0, 0, 0, t - text.shape[1]))
        data.features["text_mask"] = F.pad(mask, (0, t - mask.shape[1]))
        event = self.base.prototypes[data.clip_label] + b.segment_jitter * torch.randn(n, b.event_dim, generator=g)
        look = b.nuisance_scale * torch.randn(n, b.nuisance_dim, generator=g)
        still = _unit_rms(self.renderers["image"](torch.cat([event, look], -1)))
        data.features["image"] = still.unsqueeze(1) + self.cfg.still_noise * torch.randn(n, t, self.cfg.image_dim,
                                                                                          generator=g)
        data.segment_labels["image"] = data.clip_label.unsqueeze(1).expand(n, t).clone()
        speaker = (b.nuisance_scale * torch.randn(n, 1, b.nuisance_dim, generator=g)).expand(n, t, b.nuisance_dim)
        spoken = _unit_rms(self.renderers["speech"](torch.cat([data.features["text"], speaker], -1)))
        data.features["speech"] = spoken + b.sensor_noise * torch.randn(spoken.shape, generator=g)
        return data


def _random_network(in_dim: int, hidden: int, out_dim: int, g: torch.Generator):
    w1 = torch.randn(in_dim, hidden, generator=g) / math.sqrt(in_dim)
    b1 = 0.5 * torch.randn(hidden, generator=g)
    w2 = torch.randn(hidden, out_dim, generator=g) / math.sqrt(hidden)
    return lambda latent: torch.tanh(latent @ w1 + b1) @ w2


def _unit_rms(x: Tensor) -> Tensor:
    return x / x.pow(2).mean().sqrt()


# ---------------------------------------------------------------------- methods


def bench_model_config(world: ContinualWorldConfig, modality: str, num_codes: int,
                       overrides: tuple[str, ...] = ()) -> COMETConfig:
    """Phase model (sizes as trainer.programs.bench.fidelity) training ``modality`` with text, then ``overrides``."""
    dims = {"video": world.base.video_dim, "audio": world.base.audio_dim, "image": world.image_dim,
            "speech": world.speech_dim, "text": world.base.text_dim}
    cfg = COMETConfig(
        modalities=(modality, "text"), feature_dims={modality: dims[modality], "text": dims["text"]},
        spatial_patches={},
        encoder=EncoderConfig(semantic_dim=64, specific_dim=32, ff_dim=128, specific_hidden=64, decoder_hidden=64),
        quantizer=QuantizerConfig(num_codes=num_codes, dim=64, reset_steps=50),
        club=CLUBConfig(hidden_dim=64, nonnegative=True),          # COMETConfig's CLUB, smaller
        adapter=AdapterConfig(), replay=ReplayConfig())
    return with_overrides(cfg, overrides)


# ---------------------------------------------------------------------- evaluation

def code_split(model: COMETModel, data: SyntheticSet) -> CodeSplit:
    """Frozen codes of every modality the model encodes (carried ones included), with the labels."""
    labelled = LabelledFeatures(data.features, data.segment_labels, data.clip_label)
    return encode_split(model, labelled, model.downstream_modalities)


def evaluate_phase(model: COMETModel, downstream: dict[str, SyntheticSet], cross: SyntheticSet, classes: int,
                   probe: ProbeConfig) -> dict[str, Any]:
    splits = {name: code_split(model, data) for name, data in downstream.items()}
    known = set(model.downstream_modalities)
    results: dict[str, Any] = {"unseen": {}, "seen": {}}
    if {"video", "audio"} <= known:
        cross_split = code_split(model, cross)
        for source, target in DIRECTIONS:
            for probe_fn, name in ((classification_probe, "classification"), (localisation_probe, "localisation")):
                r = probe_fn(splits, source, target, classes, probe)
                results["unseen"][f"{name}/{r.direction}"] = {"cross": r.cross, "in_modality": r.in_modality}
            r = cross_dataset_probe(splits, cross_split, source, target, classes, {c: c for c in range(classes)}, probe)
            results["unseen"][f"cross_dataset/{r.direction}"] = {"cross": r.cross, "in_modality": r.in_modality}
        test = splits["test"]
        results["same_code"] = code_agreement(test, "audio", "video", classes)[1]
        inherited = model.inherited
        results["new_code_share"] = {m: float((test.indices[m] >= inherited).float().mean()) if inherited else 0.0
                                     for m in ("video", "audio")}
    for m in sorted(known - {"text"}):
        to_text, from_text = class_retrieval(splits["test"], m, "text"), class_retrieval(splits["test"], "text", m)
        results["seen"][m] = {"to_text": to_text, "from_text": from_text,
                              "avg": sum(to_text.values()) / 6 + sum(from_text.values()) / 6}
    return results


# ---------------------------------------------------------------------- one method

def phase_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of one phase's evaluation: ``eval/<task>/<V_to_A>/<cross|in_modality>`` and
    ``eval/retrieval/<m>_text/<avg|to_text_P@k|from_text_P@k>``."""
    metrics = {}
    for key, scores in results["unseen"].items():
        task, direction = key.split("/")
        for name, value in scores.items():
            metrics[f"eval/{task}/{direction.replace('→', '_to_')}/{name}"] = value
    for m, scores in results["seen"].items():
        metrics[f"eval/retrieval/{m}_text/avg"] = scores["avg"]
        for way in ("to_text", "from_text"):
            metrics.update({f"eval/retrieval/{m}_text/{way}_P@{k}": v for k, v in scores[way].items()})
    if "same_code" in results:
        metrics["eval/same_code_share"] = results["same_code"]
    return metrics


def run_method(method: Method, cfg: ContinualConfig, mlflow_dir: str | None = None) -> dict[str, Any]:
    """Train and evaluate every phase of ``method``, each phase a main job (``trainer.programs.bench.jobs``) that starts
    from the previous phase's checkpoint through ``run.init_from``, as the Slurm chain runs them. With
    ``mlflow_dir`` the phases' training runs and each phase's evaluation (a run ``<method>-seed<seed>``, step =
    phase number) are also logged to MLflow (sqlite store in that directory)."""
    tracker, mlflow_uri = None, ""
    if mlflow_dir:
        from trainer.tracking import Tracker, mlflow_environment
        from trainer.configs.tracking import TrackingConfig

        root = Path(mlflow_dir).resolve()
        mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
        tracking = TrackingConfig(tracking_uri=mlflow_uri, experiment="cmg-continual-bench",
                                  run_name=f"{method.name}-seed{cfg.train.seed}", flush_interval_s=0)
        os.environ.update(mlflow_environment(tracking, root))   # MLflow's settings (each phase's job sets them again)
        tracker = Tracker(tracking, root / f"{method.name}-seed{cfg.train.seed}")
        tracker.start(tags={"method": method.name, "seed": cfg.train.seed, "order": ",".join(cfg.order)})
        tracker.log_config(cfg)
    start = time.perf_counter()
    world = ContinualWorld(cfg.world)
    classes = cfg.world.base.classes
    downstream_all = world.sample(cfg.downstream_clips, cfg.downstream_seed)
    parts = split_indices(len(downstream_all), cfg.split, cfg.probe.seed)
    downstream = {name: downstream_all.subset(index) for name, index in parts.items()}
    cross = world.sample(cfg.downstream_clips // 4, cfg.cross_seed)
    phases, previous, num_codes = [], "", cfg.num_codes
    with tempfile.TemporaryDirectory(prefix="cmg-continual-") as root:
        for i, pair in enumerate(cfg.order):
            modality = PAIR_NAMES[pair]
            corpus = world.sample(cfg.phase_clips, cfg.phase_seed + i)
            features = {k: corpus.features[k] for k in (modality, "text", "text_mask")}
            base = bench_model_config(cfg.world, modality, num_codes, cfg.model_overrides)
            model_cfg = with_club_lr(method.model_config(base, cfg.new_codes if previous else 0), cfg.train)
            train = dataclasses.replace(cfg.train, seed=cfg.train.seed + i)
            job = bench_job(model_cfg, train, Path(root) / f"phase{i + 1}_{pair}", mlflow_uri=mlflow_uri,
                            experiment="cmg-continual-bench", run_name=f"{method.name}-seed{cfg.train.seed}-{pair}",
                            phase=pair, init_from=previous)
            phase_start = time.perf_counter()
            pretrained, stats = pretrain(job, features)
            previous = str(pretrained.checkpoint)
            num_codes = pretrained.model.quantizer.cfg.num_codes
            trained = time.perf_counter()
            results = evaluate_phase(pretrained.model, downstream, cross, classes, cfg.probe)
            phases.append({"pair": pair, "codes": num_codes, "train_s": trained - phase_start,
                           "eval_s": time.perf_counter() - trained, "last": last_logged(job.run.dir), **results})
            if tracker is not None:
                tracker.log_metrics(phase_metrics(results) | {"codebook/size": num_codes}, i + 1)
    if tracker is not None:
        tracker.end("FINISHED")
    return {"method": method.name, "phases": phases, "wall_s": time.perf_counter() - start}


# ---------------------------------------------------------------------- tables

def table1_cells(phase: dict[str, Any]) -> list[float]:
    unseen = phase["unseen"]
    return [100.0 * unseen[f"{task}/{d}"]["cross"] for task in TABLE1_TASKS for d in ("V→A", "A→V")]


def format_tables(rows: list[dict[str, Any]], cfg: ContinualConfig) -> str:
    w, tr = cfg.world.base, cfg.train
    order = " -> ".join(p.upper() for p in cfg.order)
    lines = [f"Synthetic seed 004 Table 1: phases {order}, {cfg.phase_clips} clips x {tr.steps} steps each "
             f"(B={tr.batch_size}); world K={w.classes}, T={w.segments}; downstream "
             f"{'/'.join(str(round(f * cfg.downstream_clips)) for f in cfg.split)} train/val/test clips",
             "Unseen pair video↔audio (never trained together): AVE = classification accuracy (%), AVVP = "
             "localisation micro F1 (%), AVE→AVVP = per-segment F1 of clip-trained heads on a second corpus"]
    stages = [i for i in (1, 2) if i < len(cfg.order)]
    header = f"{'method':<15}|" + "".join(
        f"{'AVE V→A':>8}{'A→V':>6}{'AVVP V→A':>9}{'A→V':>6}{'X V→A':>7}{'A→V':>6}{'Avg':>6} |" for _ in stages)
    lines.append(f"{'':<15}|" + "".join(f"{f'after phase {i + 1} ({cfg.order[i].upper()})':^48}|" for i in stages))
    lines.append(header)
    lines.append("-" * len(header))
    for r in rows:
        cells = []
        for i in stages:
            values = table1_cells(r["phases"][i])
            cells.append("".join(f"{v:>{wd}.1f}" for v, wd in zip(values, (8, 6, 9, 6, 7, 6))) +
                         f"{sum(values) / len(values):>6.1f} |")
        lines.append(f"{r['method']:<15}|" + "".join(cells))
    lines += ["", "Diagnostics (downstream test): same code = share of (clip, segment) cells where audio and video "
              "carry the same event and pick the same code; new = share of segments on codes appended after phase 1"]
    for r in rows:
        cells = [f"phase {i + 1}: same code {100 * r['phases'][i]['same_code']:.1f}%, new codes video "
                 f"{100 * r['phases'][i]['new_code_share']['video']:.1f}% / audio "
                 f"{100 * r['phases'][i]['new_code_share']['audio']:.1f}%" for i in stages]
        lines.append(f"{r['method']:<15}| " + " | ".join(cells))
    lines += ["", "Seen pairs: X↔text zero-shot class-level retrieval, mean of precision@1/5/10 in both directions "
              f"(%, chance {100 / w.classes:.0f}); forgetting = right after the pair's own phase minus after the "
              "last phase"]
    seen_pairs = [PAIR_NAMES[p] for p in cfg.order]
    header = f"{'method':<15}|" + "".join(
        f"{m + '↔T':>10}" + "".join(f"{f'p{j + 1}':>7}" for j in range(i, len(cfg.order))) + f"{'forget':>8} |"
        for i, m in enumerate(seen_pairs))
    lines.append(header)
    lines.append("-" * len(header))
    for r in rows:
        cells = []
        for i, m in enumerate(seen_pairs):
            values = [100.0 * r["phases"][j]["seen"][m]["avg"] for j in range(i, len(cfg.order))]
            cells.append(f"{'':>10}" + "".join(f"{v:>7.1f}" for v in values) + f"{values[0] - values[-1]:>8.1f} |")
        lines.append(f"{r['method']:<15}|" + "".join(cells))
    return "\n".join(lines)


def target_numbers(row: dict[str, Any], cfg: ContinualConfig) -> dict[str, float]:
    """The issue's target quantities of one method's run: unseen-pair Avg after phases 2 and 3, and the seen-pair
    forgetting (retrieval drop summed over the earlier pairs)."""
    numbers = {f"unseen-pair Avg after phase {i + 1}": sum(table1_cells(row["phases"][i])) / 6
               for i in (1, 2) if i < len(cfg.order)}
    seen = [PAIR_NAMES[p] for p in cfg.order[:-1]]
    numbers["forgetting"] = sum(100.0 * (row["phases"][i]["seen"][m]["avg"] - row["phases"][-1]["seen"][m]["avg"])
                                for i, m in enumerate(seen))
    return numbers


def mean_target_numbers(method_runs: list[tuple[str, dict[str, Any]]],
                        cfg: ContinualConfig) -> dict[str, dict[str, float]]:
    """{method: its ``target_numbers`` averaged over its runs} from (method name, ``run_method`` result) pairs."""
    per_method: dict[str, list[dict[str, float]]] = {}
    for name, row in method_runs:
        per_method.setdefault(name, []).append(target_numbers(row, cfg))
    return {name: {key: mean([n[key] for n in numbers]) for key in numbers[0]} for name, numbers in per_method.items()}


def check_targets(runs: list[list[dict[str, Any]]], cfg: ContinualConfig) -> list[tuple[str, bool, str]]:
    """Each COMET row against DCID on the mean over seeds (``runs``: the rows of each seed): higher unseen-pair
    Avg after phases 2 and 3, lower forgetting. The numbers also say in how many seeds the row wins."""
    per_seed = [{r["method"]: target_numbers(r, cfg) for r in rows} for rows in runs]
    if not per_seed or any("dcid" not in numbers for numbers in per_seed):
        return []
    checks = []
    for name in (n for n in per_seed[0] if n != "dcid"):
        for key in per_seed[0][name]:
            ours, theirs = [s[name][key] for s in per_seed], [s["dcid"][key] for s in per_seed]
            lower = key == "forgetting"
            wins = sum((a < b) if lower else (a > b) for a, b in zip(ours, theirs))
            mean_ours, mean_theirs = mean(ours), mean(theirs)
            met = mean_ours < mean_theirs if lower else mean_ours > mean_theirs
            checks.append((f"{name} {'<' if lower else '>'} DCID: {key}", met,
                           f"{mean_ours:.1f} vs {mean_theirs:.1f} (mean of {len(runs)} seed(s); better in {wins})"))
    return checks


# ---------------------------------------------------------------------- command

def _config_from_args(args: argparse.Namespace, seed: int) -> ContinualConfig:
    order = tuple(args.order.split(","))
    unknown = [p for p in order if p not in PAIR_NAMES]
    if unknown or len(set(order)) != len(order):
        raise SystemExit(f"--order must list distinct pairs of {list(PAIR_NAMES)}, got {args.order!r}")
    world = ContinualWorldConfig(base=world_config(args.world, ContinualWorldConfig().base))
    return ContinualConfig(world=world, order=order, new_codes=args.new_codes,
                           train=dataclasses.replace(ContinualConfig().train, steps=args.steps, seed=seed),
                           probe=ProbeConfig(epochs=args.probe_epochs, seed=seed), model_overrides=tuple(args.set))


def _run_child(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "trainer.programs.bench.continual_features", "--child", name, "--steps",
           str(args.steps), "--seeds", str(seed), "--probe-epochs", str(args.probe_epochs), "--threads",
           str(args.threads), "--order", args.order, "--new-codes", str(args.new_codes), "--world", args.world] + \
        [f"--set={text}" for text in args.set] + \
        (["--mlflow", args.mlflow] if args.mlflow else [])
    return run_json_child(cmd, f"continual method '{name}'")


def main(argv: list[str] | None = None) -> int:
    parser = continual_features_parser()   # torch-free, for `cmg bench continual --help`
    args = parser.parse_args(argv)
    if args.raw:
        from trainer.programs.bench.continual_pairs import main as raw_main

        return raw_main(args, list(sys.argv[1:] if argv is None else argv))
    if args.steps is None:
        args.steps = ContinualConfig().train.steps
    torch.set_num_threads(args.threads)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    if args.child:
        print(json.dumps(run_method(METHODS[args.child], _config_from_args(args, seeds[0]), args.mlflow)))
        return 0
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    configs = {seed: _config_from_args(args, seed) for seed in seeds}
    start = time.perf_counter()
    done = fan_out([partial(_run_child, n, seed, args) for seed in seeds for n in names], args.jobs)
    wall = time.perf_counter() - start
    runs = [done[i * len(names):(i + 1) * len(names)] for i in range(len(seeds))]
    for seed, rows in zip(seeds, runs):
        print(f"==== seed {seed}\n{format_tables(rows, configs[seed])}\n")
    for description, met, numbers in check_targets(runs, configs[seeds[0]]):
        print(verdict(description, met, numbers))
    print(f"\nwall time {wall:.0f} s for {len(done)} runs ({args.jobs} at a time, {args.threads} thread(s) each)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": to_dict(configs[seeds[0]]), "seeds": seeds, "runs": runs, "wall_s": wall}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
