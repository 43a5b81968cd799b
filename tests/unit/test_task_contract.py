"""The task contract (trainer/tasks/base.py ``Task``), run over every registered task.

``CASES`` holds a toy config and batch per task name; a task added to ``trainer.tasks.TASKS`` without a case
fails ``test_every_registered_task_has_a_case``, and then runs through every test below. The last test adds a
fourth task as one module plus a line in each registry and trains it through the main job's loop.
"""

from __future__ import annotations

import importlib.util
import itertools
import io
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from trainer.configs.load import to_dict
from trainer.configs.data import DataConfig
from trainer.eval.frozen_codes import load_pretrained
from trainer.configs.job import JobConfig, OptimConfig, RunConfig
from trainer.loop import train_in_memory
from trainer.configs.model import (
    TASK_CONFIGS,
    AdapterConfig, CLUBConfig, COMETConfig, CoarseConfig, EncoderConfig, FCCIDConfig, QuantizerConfig, UniCodeConfig
)
from trainer.models.segment_coder import SegmentCoder
from trainer.tasks import TASKS, Task, task_class
from trainer.configs.tracking import TrackingConfig

B, T, L = 4, 5, 7
DIMS = {"audio": 12, "video": 16, "text": 20}
ENCODER = EncoderConfig(semantic_dim=16, specific_dim=8, ff_dim=32, dropout=0.0, se_reduction=4, pool_hidden=8,
                        specific_hidden=16, spatial_specific_channels=8, decoder_hidden=16)
QUANTIZER = QuantizerConfig(num_codes=8, dim=16, reset_steps=2)
CLUB = CLUBConfig(hidden_dim=16, inner_steps=2)


def _batch(modalities: tuple[str, ...], text_length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modalities:
        shape = {"video": (B, T, 4, DIMS[m]), "text": (B, text_length, DIMS[m])}.get(m, (B, T, DIMS[m]))
        out[m] = torch.randn(shape, generator=g)
    if "text" in modalities:
        out["text_mask"] = torch.arange(text_length) < torch.tensor([3, 4, 5, 2]).unsqueeze(1)
    return out


@dataclass(frozen=True)
class Case:
    config: Callable[[], object]
    modalities: tuple[str, ...]
    text_length: int = T          # Uni-Code and COMET: a caption token per segment; FCCID: any length

    def batch(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return _batch(self.modalities, self.text_length, seed)


def _common(modalities):
    return dict(feature_dims={m: DIMS[m] for m in modalities}, spatial_patches={"video": 4} if "video" in modalities
                else {}, encoder=ENCODER, quantizer=QUANTIZER, club=CLUB)


CASES = {
    "unicode": Case(lambda: UniCodeConfig(modalities=("audio", "video"), **_common(("audio", "video"))),
                    ("audio", "video")),
    "fccid": Case(lambda: FCCIDConfig(coarse=CoarseConfig(hidden_dim=16, specific_dim=6),
                                      **_common(("audio", "video", "text"))), ("audio", "video", "text"), L),
    "comet": Case(lambda: COMETConfig(modalities=("audio", "text"), adapter=AdapterConfig(experts=3),
                                      **_common(("audio", "text"))), ("audio", "text")),
}


def _task(name: str, seed: int = 0) -> Task:
    torch.manual_seed(seed)
    return task_class(name)(CASES[name].config())


def _features(task: Task, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return task.prepare_batch(CASES[name].batch(seed))


def _trained_once(name: str) -> tuple[Task, dict[str, torch.Tensor]]:
    """A task after one training-mode loss and codebook update (the codebook initialised), and its batch."""
    task = _task(name)
    features = _features(task, name)
    task.compute_loss(features, 0)
    task.after_optimizer_step_()
    return task, features


def _tensor_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def test_every_registered_task_has_a_case():
    assert set(CASES) == set(TASKS) == set(TASK_CONFIGS)   # the torch side and the config side agree


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_keeps_the_protocol_and_its_model_the_segment_coder_contract(name):
    task = _task(name)
    assert isinstance(task, Task)
    assert isinstance(task.model, nn.Module) and isinstance(task.model, SegmentCoder)
    assert list(task.model.quantizer.parameters()) == []            # the codebook is buffers, owned by EMA
    assert set(task.model.modalities) <= set(task.model.downstream_modalities)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_loss_is_the_weighted_sum_of_its_terms_and_metrics_are_detached_scalars(name):
    task = _task(name)
    features = _features(task, name)
    terms, _ = _task(name).loss_terms(features, _task(name).forward(features), 0)   # forward and terms apart
    assert all(hasattr(task.cfg.loss, k) and v.ndim == 0 for k, v in terms.items())
    loss, metrics = task.compute_loss(features, 0)
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
    assert all(v.ndim == 0 and not v.requires_grad for v in metrics.values())
    weights = task.cfg.loss
    assert set(terms) <= set(metrics) and {"recon", "commit"} <= set(terms)
    total = sum(getattr(weights, k) * metrics[k] for k in terms)
    assert torch.allclose(total, metrics["loss"], rtol=1e-5, atol=1e-6), (sorted(terms), total, metrics["loss"])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_codebook_gets_no_gradient_and_changes_only_after_the_optimizer_step(name):
    task = _task(name)
    quantizer = task.model.quantizer
    loss, _ = task.compute_loss(_features(task, name), 0)
    codebook = task.codebook().clone()
    loss.backward()
    torch.optim.SGD([p for p in task.model.parameters() if p.requires_grad], lr=0.1).step()
    assert quantizer.codebook.grad is None and torch.equal(task.codebook(), codebook)
    stats = task.after_optimizer_step_()
    assert not torch.equal(task.codebook(), codebook)
    assert {f"codebook/codes_used_{m}" for m in task.model.modalities} <= set(stats)
    assert set(task.code_usage_()) == set(task.model.modalities)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_club_estimators_take_inner_steps_but_the_main_loss_never_grads_them(name):
    task = _task(name)
    before = _tensor_state(task.club)
    loss, metrics = task.compute_loss(_features(task, name), 0)
    assert "club_log_likelihood" in metrics
    moved = {k.split(".")[0] for k, v in task.club.state_dict().items() if not torch.equal(before[k], v)}
    assert moved == set(task.club.keys())                              # every estimator took inner steps
    loss.backward()
    assert all(p.grad is None for p in task.club.parameters())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_eval_mode_changes_no_state(name):
    task, _ = _trained_once(name)                                      # the codebook initialised in training mode
    task.model.eval()
    quantizer, club = _tensor_state(task.model.quantizer), _tensor_state(task.club)
    generator = task.cpc_generator.get_state()
    _, metrics = task.compute_loss(_features(task, name, seed=1), 1)
    assert "club_log_likelihood" not in metrics
    assert all(torch.equal(v, quantizer[k]) for k, v in _tensor_state(task.model.quantizer).items())
    assert all(torch.equal(v, club[k]) for k, v in _tensor_state(task.club).items())
    assert torch.equal(task.cpc_generator.get_state(), generator)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_state_round_trips_through_a_weights_only_load(name):
    task = _task(name)
    optimizer = torch.optim.SGD([p for p in task.model.parameters() if p.requires_grad], lr=0.01)
    for step in range(2):
        loss, _ = task.compute_loss(_features(task, name, seed=step), step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        task.after_optimizer_step_()
    buffer = io.BytesIO()
    torch.save({"task": task.state_dict(), "model": task.model.state_dict(), "replicas": task.replicated_state()},
               buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = _task(name, seed=5)
    fresh.model.load_state_dict(state["model"])                        # what the engine restores
    fresh.load_state_dict(state["task"])
    assert all(torch.equal(v, fresh.replicated_state()[k]) for k, v in state["replicas"].items())
    _, ours = task.compute_loss(_features(task, name, seed=9), 2)
    _, theirs = fresh.compute_loss(_features(fresh, name, seed=9), 2)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)           # same t, same estimator updates


@pytest.mark.parametrize("name", sorted(TASKS))
def test_phase_hooks_of_a_first_phase(name):
    task, _ = _trained_once(name)
    metrics = task.end_phase_(itertools.repeat(CASES[name].batch(3)), "cpu")
    assert all(isinstance(v, float) for v in metrics.values())
    extra = task.extra_state()
    buffer = io.BytesIO()
    torch.save(extra, buffer)                                          # tensors only: loadable with weights_only
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == extra.keys()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_segment_codes_of_every_downstream_modality(name):
    task, features = _trained_once(name)
    task.model.eval()
    with torch.no_grad():
        for m in task.model.downstream_modalities:
            codes, vectors = task.model.segment_codes(features, m)
            assert codes.dtype == torch.int64 and codes.shape == vectors.shape[:2]
            assert torch.equal(vectors, task.codebook()[codes])


FOURTH_TASK = '''
"""A fourth task in one module: Uni-Code's model trained on reconstruction and commitment only."""
from trainer.tasks.unicode import UniCodeTask


class ReconstructionOnlyTask(UniCodeTask):
    def loss_terms(self, features, out, step):
        terms, metrics = super().loss_terms(features, out, step)
        return {k: terms[k] for k in ("recon", "commit")}, metrics
'''


def test_a_fourth_task_is_one_module_and_a_line_in_each_registry(tmp_path, monkeypatch):
    path = tmp_path / "reconstruction_only.py"
    path.write_text(textwrap.dedent(FOURTH_TASK))
    spec = importlib.util.spec_from_file_location("reconstruction_only", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reconstruction_only", module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(TASK_CONFIGS, "reconstruction_only", UniCodeConfig)   # the config side (torch-free)
    monkeypatch.setitem(TASKS, "reconstruction_only", module.ReconstructionOnlyTask)

    g = torch.Generator().manual_seed(0)
    features = {"audio": torch.randn(16, T, DIMS["audio"], generator=g),
                "video": torch.randn(16, T, 4, DIMS["video"], generator=g)}
    model = to_dict(CASES["unicode"].config())                         # as a YAML file would give it
    job = JobConfig(run=RunConfig(dir=str(tmp_path / "run"), max_steps=3, ckpt_every=3, resume="", progress=False),
                    data=DataConfig(kind="memory", batch_size=4, num_workers=0), task="reconstruction_only",
                    model=model, optim=OptimConfig(lr=1e-3), tracking=TrackingConfig(enabled=False))
    assert isinstance(job.model, UniCodeConfig)                        # typed by the new task's registry entry
    checkpoint = train_in_memory(job, features)
    pretrained = load_pretrained(checkpoint)                           # evaluation reads it like any other task's
    assert pretrained.meta.task == "reconstruction_only" and pretrained.step == 3
    codes, _ = pretrained.model.segment_codes({"audio": features["audio"][:2]}, "audio")
    assert codes.shape == (2, T)
