"""In-batch negatives over the global batch (``model.negatives="global"``, the default): 2 ranks × B/2 give every
loss term the value and the parameter gradient that one process × B gives (gloo, fork workers), for Uni-Code,
FCCID and COMET's pseudo-modality CPC. The gradient compared is the one the engine applies: each rank's gradient
of the term, averaged over ranks. With ``"local"`` the in-batch terms differ (each rank scores against its own
half batch only).

The whole run through ``trainer/main.py`` under ZeRO-2 is tests/system/test_negatives_job.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from comet_utils import comet_batch, comet_config
from dist_utils import init_gloo, run_ranks
from fccid_utils import fccid_batch, small_cfg
from numerics import assert_reordered_close
from task_utils import write_phase
from unicode_utils import small_unicode_config, unicode_batch

from trainer import distributed
from trainer.checkpoint import load_init_state_, read_init_source
from trainer.tasks import FCCIDTask, UniCodeTask
from trainer.tasks.comet import COMETTask

GLOBAL_BATCH = 8
PER_SAMPLE = {"recon", "commit"}
AT_ITS_ANCHOR = {"ewc"}   # EWC at the start of a phase: θ = θ*, so value and gradient are 0 (on every rank)


def build(kind: str, negatives: str, phase_dir: Path
          ) -> tuple[object, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A task of ``kind`` with identical initial weights on every rank, the global batch it trains on, and the global
    batch its codebook is initialised from (None: it carries one from the previous phase).

    The codebook comes from another batch than the one the terms are computed on: data init copies batch vectors
    into the codebook, and CMCM's gradient at a vector ``z`` near a code ``e`` has condition number
    ||z|| / ||z − e|| (it differentiates ||z − e||), so a term computed on the init batch itself would amplify the
    reordering of the encoder's sums by about 100 (FCCID: 8 clips, 8 codes, every clip next to its own code)."""
    torch.manual_seed(0)
    if kind == "unicode":
        return UniCodeTask(small_unicode_config(negatives=negatives)), unicode_batch(0, GLOBAL_BATCH), \
            unicode_batch(1, GLOBAL_BATCH)
    if kind == "fccid":
        return FCCIDTask(small_cfg(negatives=negatives)), fccid_batch(GLOBAL_BATCH, 7), fccid_batch(GLOBAL_BATCH, 8)
    # COMET's second phase (audio-text after video-text): inherited codes, new codes, the pseudo-modality
    task = COMETTask(comet_config(("audio", "text"), new_codes=4, negatives=negatives))
    init = read_init_source(str(phase_dir))
    load_init_state_(task.model, init)
    task.begin_phase_(init, task.cfg)
    return task, comet_batch(("audio", "text"), b=GLOBAL_BATCH, seed=20), None


def term_values_and_gradients(task, local: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every loss term of one training forward: its value, and its parameter gradient averaged over ranks."""
    features = task.prepare_batch(local)
    terms, _ = task.loss_terms(features, task.forward(features), 0)
    params = [p for p in task.model.parameters() if p.requires_grad]
    result = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
        result[name] = (value.detach(), distributed.all_reduce_sum_(flat).div_(distributed.world_size()))
    return result


def _worker(rank: int, world: int, port: int, out_dir: Path, kind: str, negatives: str) -> None:
    if world > 1:
        init_gloo(rank, world, port)
    task, batch, init_batch = build(kind, negatives, out_dir / "vt")
    if init_batch is not None:      # data init on the all-gathered halves: the same 8 clips as in one process
        with torch.no_grad():
            task.forward(task.prepare_batch({k: v.chunk(world)[rank] for k, v in init_batch.items()}))
    local = {k: v.chunk(world)[rank] for k, v in batch.items()}
    torch.save(term_values_and_gradients(task, local), out_dir / f"{kind}_{negatives}_world{world}_rank{rank}.pt")


@pytest.fixture(scope="module")
def first_phase(tmp_path_factory) -> Path:
    """A video-text COMET phase checkpoint (what the second phase starts from)."""
    root = tmp_path_factory.mktemp("comet")
    torch.manual_seed(0)
    first = COMETTask(comet_config())
    optimizer = torch.optim.SGD(first.model.parameters(), lr=0.05)
    for step in range(2):
        loss, _ = first.compute_loss(first.prepare_batch(comet_batch(("video", "text"), b=6, seed=step)), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first.after_optimizer_step_()
    first.end_phase_(iter([comet_batch(("video", "text"), b=6, seed=5)]), "cpu")
    write_phase(root / "vt", first, first.cfg, 2)
    return root


def run(root: Path, kind: str, negatives: str) -> tuple[dict, dict, dict]:
    run_ranks(_worker, 2, root, kind, negatives, timeout=120)
    run_ranks(_worker, 1, root, kind, negatives, timeout=120)
    return tuple(torch.load(root / f"{kind}_{negatives}_world{w}_rank{r}.pt", weights_only=True)
                 for w, r in ((2, 0), (2, 1), (1, 0)))


EXPECTED_TERMS = {"unicode": {"recon", "commit", "cpc", "cmcm", "mi"},
                  "fccid": {"recon", "commit", "cmcm", "cpc", "nce", "mi"},
                  "comet": {"recon", "commit", "cpc", "cmcm", "mi", "gate", "pm", "ewc"}}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unicode", "fccid", "comet"])
def test_global_negatives_give_every_term_the_value_and_gradient_of_one_process(first_phase, kind):
    r0, r1, ref = run(first_phase, kind, "global")
    assert set(ref) == EXPECTED_TERMS[kind]
    for name, (value, grad) in ref.items():
        v0, g0 = r0[name]
        v1, g1 = r1[name]
        assert torch.equal(g0, g1), f"{name}: the applied gradient differs between ranks"
        if name in AT_ITS_ANCHOR:
            assert value.item() == v0.item() == v1.item() == 0.0 and not grad.any() and not g0.any(), name
            continue
        if name in PER_SAMPLE:       # the mean over this rank's half batch: the two halves average to the whole
            assert_reordered_close((v0 + v1) / 2, value, what=name)
        else:                        # the global-batch term itself, on every rank
            assert torch.equal(v0, v1), name
            assert_reordered_close(v0, value, what=name)
        assert grad.abs().max().item() > 0, f"{name}: no gradient at all"
        assert_reordered_close(g0, grad, what=f"{name} gradient")


@pytest.mark.slow
def test_local_negatives_score_against_the_half_batch_only(first_phase):
    r0, r1, ref = run(first_phase, "unicode", "local")
    for name in ("cpc", "cmcm", "mi"):
        halves = (r0[name][0] + r1[name][0]).item() / 2      # what the run logs: the mean over ranks
        # far outside the tolerance within which global negatives agree with one process (rounding is ~1e-7)
        assert halves != pytest.approx(ref[name][0].item(), rel=1e-3), f"{name}: local negatives gave the global term"
