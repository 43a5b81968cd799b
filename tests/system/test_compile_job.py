"""``run.compile``: the task's forward and loss terms under ``torch.compile`` (CodebookTask.compile_).

- one ``compute_loss`` on the same state and batch gives every term and every parameter gradient that eager gives,
  to float tolerance (Uni-Code with a spatial video map, and FCCID);
- the main job's loop with ``run.compile=true`` resumes exactly: 3 steps, a new process-like restart (the task is
  rebuilt and compiled again), 3 more, against 6 uninterrupted compiled steps: the same logged terms and the same
  final model, bit for bit. Its first step's loss is eager's to float tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch
from fccid_utils import DIMS, B, L, T
from fccid_utils import small_cfg as small_fccid_config
from numerics import COMPOUNDED_ULPS, assert_reordered_close
from unicode_utils import small_unicode_config, unicode_batch

from trainer.checkpoint_format import MODEL_FILE, CheckpointManager
from trainer.configs.data import DataConfig
from trainer.configs.job import JobConfig, OptimConfig, RunConfig
from trainer.loop import METRICS_FILE, train_in_memory
from trainer.tasks import FCCIDTask, UniCodeTask
from trainer.configs.tracking import TrackingConfig

pytestmark = [pytest.mark.slow, pytest.mark.numerics]


def _fccid_batch() -> dict[str, torch.Tensor]:
    """Four clips of the toy FCCID shapes (tests/support/fccid_utils.py), captions of 3, 4, 7 and 5 tokens."""
    g = torch.Generator().manual_seed(3)
    return {"audio": torch.randn(B, T, DIMS["audio"], generator=g),
            "video": torch.randn(B, T, 2, 2, DIMS["video"], generator=g),
            "text": torch.randn(B, L, DIMS["text"], generator=g),
            "text_mask": torch.arange(L) < torch.tensor([3, 4, 7, 5]).unsqueeze(1)}


@pytest.mark.parametrize("kind", ["unicode", "fccid"])
def test_compiled_loss_terms_and_gradients_match_eager(kind):
    torch.compiler.reset()
    build = (lambda: UniCodeTask(small_unicode_config())) if kind == "unicode" else (
        lambda: FCCIDTask(small_fccid_config()))
    batch = unicode_batch(0, 6) if kind == "unicode" else _fccid_batch()
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        task = build()
        if compiled:
            task.compile_()
        for step in range(2):                  # step 0 initialises the codebook; step 1 is a trained state
            torch.manual_seed(10 + step)
            loss, metrics = task.compute_loss(batch, step)
            task.model.zero_grad(set_to_none=True)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}
            task.after_optimizer_step_()
        results.append((metrics, grads))
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert eager.keys() == compiled.keys()
    # every term at the magnitude of the largest: some (the CLUB bound, a difference of two log-likelihoods) cancel
    # to far below the log-likelihoods they are summed from
    term_scale = max(value.abs().max().item() for value in eager.values())
    for name in eager:
        assert_reordered_close(compiled[name], eager[name], ulps=COMPOUNDED_ULPS, scale=term_scale, what=name)
    assert eager_grads.keys() == compiled_grads.keys() and len(eager_grads) > 10
    # at the magnitude of the whole gradient: some entries are exactly 0 in exact arithmetic (the bias of a softmax
    # scorer) and only the rounding of larger terms that cancel in practice (tests/support/numerics.py: the scale)
    scale = max(grad.abs().max().item() for grad in eager_grads.values())
    for name, grad in eager_grads.items():
        assert_reordered_close(compiled_grads[name], grad, ulps=COMPOUNDED_ULPS, scale=scale, what=f"{name} gradient")


def _job(run_dir, max_steps: int, compile: bool) -> JobConfig:
    model = small_unicode_config()
    return JobConfig(run=RunConfig(dir=str(run_dir), max_steps=max_steps, ckpt_every=3, progress=False,
                                   compile=compile),
                     data=DataConfig(kind="memory", batch_size=4, num_workers=0), model=model,
                     optim=OptimConfig(lr=1e-3), tracking=TrackingConfig(enabled=False, log_every=1))


def _rows(run_dir) -> list[dict]:
    """The logged rows without the timings (perf/*)."""
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def test_compiled_job_resumes_exactly_and_starts_where_eager_starts(tmp_path):
    torch.compiler.reset()
    features = {"audio": torch.cat([unicode_batch(s, 4)["audio"] for s in range(4)]),
                "video": torch.cat([unicode_batch(s, 4)["video"] for s in range(4)]).flatten(2, 3)}   # (n t p c)
    train_in_memory(_job(tmp_path / "whole", 6, compile=True), features)
    train_in_memory(_job(tmp_path / "resumed", 3, compile=True), features)
    train_in_memory(_job(tmp_path / "resumed", 6, compile=True), features)      # resumes from step 3
    train_in_memory(_job(tmp_path / "eager", 1, compile=False), features)

    whole, resumed = _rows(tmp_path / "whole"), _rows(tmp_path / "resumed")
    assert [r["step"] for r in whole] == [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert whole == resumed
    final = [CheckpointManager(tmp_path / run / "checkpoints").latest() for run in ("whole", "resumed")]
    states = [torch.load(path / MODEL_FILE, weights_only=True) for path in final]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    eager = _rows(tmp_path / "eager")[0]
    for term in ("loss", "recon", "commit", "cpc", "cmcm", "mi"):
        assert_reordered_close(eager[term], whole[0][term], ulps=COMPOUNDED_ULPS, what=term)
