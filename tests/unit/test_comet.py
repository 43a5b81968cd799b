"""COMET (seed 004): codebook expansion, CMoE-Adapter and gate loss, EWC, pseudo-modality replay, phase hooks, the
continual launcher's phases file and the continual bench's world and target checks.

Unit checks are hand-computed, in one process. The 2-rank tests (expansion, Fisher) are in
tests/dist/test_comet_dist.py; two phases of the real main job and a run of the continual bench in
tests/system/test_comet_job.py.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from comet_utils import D, T, comet_batch, comet_config, identity, trained_quantizer  # noqa: E402
from job_utils import REPO  # noqa: E402
from task_utils import write_phase  # noqa: E402

from trainer.programs.continual import main as continual_main  # noqa: E402
from trainer.checkpoint import load_init_state_, read_init_source  # noqa: E402
from trainer.models.comet import (
    CMoEAdapter, cpc_entry_losses, cumulative_fisher, ewc_penalty, farthest_points, gate_balance_loss,
    pseudo_cpc_losses, pseudo_modality,
)
from trainer.configs.model import AdapterConfig, QuantizerConfig, ReplayConfig
from trainer.models.cpc import cross_cpc_losses  # noqa: E402
from trainer.models.quantizer import MMEMAQuantizer
from trainer.tasks.comet import COMETTask  # noqa: E402


def _train(task: COMETTask, steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD([p for p in task.model.parameters() if p.requires_grad], lr=0.05)
    metrics = {}
    for step in range(steps):
        loss, metrics = task.compute_loss(task.prepare_batch(comet_batch(task.modalities, seed=seed + step)), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        task.after_optimizer_step_()
    return metrics


# ---------------------------------------------------------------- codebook expansion

def test_expansion_appends_codes_and_leaves_old_codes_and_state_alone():
    q = trained_quantizer()
    shared_cfg = q.cfg
    before = {k: v.clone() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    q.expand_(3)
    assert q.cfg.num_codes == 9 and shared_cfg.num_codes == 6      # the caller's config object is not mutated
    assert torch.equal(q.codebook[:6], before["codebook"]) and torch.equal(q.ema_sum[:6], before["ema_sum"])
    assert torch.equal(q.ema_count[:6], before["ema_count"]) and torch.equal(q.last_used[:, :6], before["last_used"])
    assert q.ema_count[6:].tolist() == [1.0, 1.0, 1.0] and torch.equal(q.ema_sum[6:], q.codebook[6:])
    assert (q.last_used[:, 6:] == 2).all()                         # clocks start now (step 2)
    assert q.usage_window.shape == (2, 9) and q.stats_accumulator.numel() == 2 * 9 + 9 * 4
    # each new code is an old code plus noise of reset_noise (0.01) times its RMS
    gap = torch.cdist(q.codebook[6:], before["codebook"]).min(1).values
    rms = q.codebook[6:].norm(dim=1) / 2.0
    assert (gap <= 0.011 * rms * 2.0 + 1e-6).all() and (gap > 0).all()
    # the grown quantizer keeps training: the accumulator and EMA run over all 9 codes
    z = {m: q.codebook[[7, 7, 1]].view(1, 3, 4) for m in ("audio", "video")}
    q.accumulate_(z, {m: torch.tensor([[7, 7, 1]]) for m in z})
    stats = q.step_()
    assert int(stats["codes_used_all"]) == 2 and q.last_used[:, 7].tolist() == [3, 3]


def test_expansion_refuses_pending_statistics_and_uninitialised_codebooks():
    q = trained_quantizer()
    q.accumulate_({m: torch.zeros(1, 3, 4) for m in ("audio", "video")}, {m: torch.zeros(1, 3, dtype=torch.long)
                                                                          for m in ("audio", "video")})
    with pytest.raises(RuntimeError, match="pending"):
        q.expand_(2)
    fresh = MMEMAQuantizer(QuantizerConfig(num_codes=4, dim=4), ("audio", "video"), identity, identity)
    with pytest.raises(RuntimeError, match="never initialised"):
        fresh.expand_(2)


# ---------------------------------------------------------------- adapter and gate loss

def test_gate_loss_is_zero_at_uniform_load_and_grows_away_from_it():
    assert gate_balance_loss([torch.full((4, 3, 3), 1 / 3)]).item() == pytest.approx(0.0, abs=1e-12)
    # two tokens, both on expert 0 of 2: loads [2, 0], ideal 1 -> ((2-1)² + (0-1)²) / 2 / 1² = 1
    assert gate_balance_loss([torch.tensor([[1.0, 0.0], [1.0, 0.0]])]).item() == pytest.approx(1.0)
    # every token on one of O = 4 experts: O - 1
    assert gate_balance_loss([torch.eye(4)[[2, 2, 2]]]).item() == pytest.approx(3.0)
    # loads [1.2, 0.8] over 2 tokens (ideal 1): ((0.2)² + (0.2)²) / 2 = 0.04; tokens of two modalities pool
    skewed = [torch.tensor([[0.7, 0.3]]), torch.tensor([[0.5, 0.5]])]
    assert gate_balance_loss(skewed).item() == pytest.approx(0.04, rel=1e-5)
    uniform = torch.full((6, 4), 0.25, requires_grad=True)
    gate_balance_loss([uniform]).backward()
    assert uniform.grad.abs().max().item() == 0.0                   # a minimum: zero gradient there


def test_single_expert_adapter_is_residual_common_plus_the_inputs_specific_layer():
    adapter = CMoEAdapter(("video", "text"), 2, AdapterConfig(mixture=False))
    assert adapter.router is None
    with torch.no_grad():
        adapter.common.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        adapter.common.bias.copy_(torch.tensor([0.5, -0.5]))
        adapter.specific["video"].copy_(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
        adapter.specific["text"].fill_(100.0)                        # must not touch a video input
    y, gates = adapter(torch.tensor([[1.0, 1.0]]), "video")
    # y = x + C x + b + S^video x = [1, 1] + [3, 1] + [0.5, -0.5] + [1, 1]
    assert y.tolist() == [[5.5, 2.5]] and gates.tolist() == [[1.0]]
    with pytest.raises(KeyError, match="audio"):
        adapter(torch.ones(1, 2), "audio")


def test_adapter_starts_as_the_identity_unless_asked_for_a_random_common_layer():
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    y, gates = CMoEAdapter(("video",), 3, AdapterConfig(experts=2))(x, "video")
    assert torch.equal(y, x) and gates.shape == (4, 2)
    y, _ = CMoEAdapter(("video",), 3, AdapterConfig(experts=2, identity_init=False))(x, "video")
    assert not torch.allclose(y, x)


def test_mixture_weights_the_experts_by_the_router():
    torch.manual_seed(0)
    adapter = CMoEAdapter(("video",), 3, AdapterConfig(experts=2))
    with torch.no_grad():                                             # away from the identity it starts at
        adapter.common.weight.normal_()
        adapter.common.bias.normal_()
        adapter.specific["video"].normal_()
    x = torch.randn(5, 3)
    y, gates = adapter(x, "video")
    experts = adapter.common(x).view(5, 2, 3) + torch.einsum("ni,oji->noj", x, adapter.specific["video"])
    assert torch.allclose(gates.sum(-1), torch.ones(5))
    assert torch.allclose(y, x + (gates.unsqueeze(-1) * experts).sum(1), atol=1e-6)


# ---------------------------------------------------------------- EWC

def test_ewc_penalty_is_zero_at_the_snapshot_and_positive_away_from_it():
    anchor = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    fisher = {"w": torch.tensor([2.0, 0.0]), "b": torch.tensor([3.0])}
    assert ewc_penalty(anchor, anchor, fisher).item() == 0.0
    moved = {"w": torch.tensor([1.5, 10.0]), "b": torch.tensor([0.0])}
    # 2·0.5² + 0·12² + 3·0.5² = 1.25: a parameter with zero Fisher moves freely
    assert ewc_penalty(moved, anchor, fisher).item() == pytest.approx(1.25)
    assert cumulative_fisher({"w": torch.ones(2)}, {"w": torch.ones(2), "b": torch.ones(1)})["w"].tolist() == [2, 2]


def test_end_phase_fisher_anchors_the_adapter_and_the_penalty_starts_at_zero():
    torch.manual_seed(0)
    task = COMETTask(comet_config())
    _train(task, 2)
    batch = comet_batch(("video", "text"), b=6, seed=9)
    metrics = task.end_phase_(iter([batch]), "cpu")
    extra = task.extra_state()
    names = ["common.bias", "common.weight", "specific.text", "specific.video"]
    assert sorted(extra["ewc_fisher"]) == names and metrics["ewc/clips"] == 6.0
    params = dict(task.model.adapter.named_parameters())
    assert all(torch.equal(extra["ewc_anchor"][n], params[n]) for n in names)
    assert torch.allclose(sum(f.sum() for f in extra["ewc_fisher"].values()) /
                          sum(f.numel() for f in extra["ewc_fisher"].values()), torch.tensor(1.0))   # "mean" norm
    # the Fisher is the mean square of per-clip gradients: recompute one entry clip by clip with autograd
    features = task.prepare_batch(batch)
    raw = task.model.per_clip_gradients(features, ["common.bias"])["common.bias"]
    for n in range(6):
        one = {m: features[m][n:n + 1] for m in features}
        task.model.eval()
        out = task.model(one)
        loss = sum(torch.nn.functional.mse_loss(out["reconstruction"][m], one[m]) for m in task.modalities)
        loss = loss + sum(0.25 * torch.nn.functional.mse_loss(out["semantic"][m], out["codewords"][m]) +
                          0.125 * torch.nn.functional.mse_loss(out["semantic"][m], out["codewords"][p])
                          for m, p in (("video", "text"), ("text", "video")))
        (expected,) = torch.autograd.grad(loss, task.model.adapter.common.bias)
        assert torch.allclose(raw[n], expected, atol=1e-5)
    task.ewc_anchor, task.ewc_fisher = extra["ewc_anchor"], extra["ewc_fisher"]
    task.model.train()
    _, at_snapshot = task.compute_loss(task.prepare_batch(batch), 0)
    assert at_snapshot["ewc"].item() == 0.0
    with torch.no_grad():
        task.model.adapter.common.weight.add_(0.1)
    _, moved = task.compute_loss(task.prepare_batch(batch), 0)
    assert moved["ewc"].item() > 0.0


# ---------------------------------------------------------------- pseudo-modality replay

def test_pseudo_modality_takes_a_close_inherited_code_else_a_new_one():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])        # codes 0, 1 inherited; 2 new
    z = torch.tensor([[[0.9, 0.1], [-0.8, -0.1]]])                        # near code 0 | far from 0 and 1
    distances = torch.cdist(z, codebook).pow(2)
    pseudo = pseudo_modality(z, distances, codebook, 2, ReplayConfig(match_threshold=0.5, new_code_weight=0.2))
    # z0: ||z − e0||² = 0.02 <= 0.5·0.82; z1: nearest inherited e1 at 1.85 > 0.5·0.65 -> new code 2
    assert pseudo.codes.tolist() == [[0, 2]] and pseudo.from_old.tolist() == [[True, False]]
    assert pseudo.weights.tolist() == [[1.0, pytest.approx(0.2)]] and torch.equal(pseudo.sequence[0], codebook[[0, 2]])
    everything_old = pseudo_modality(z, distances[..., :2], codebook[:2], 2, ReplayConfig())
    assert everything_old.from_old.all() and everything_old.codes.tolist() == [[0, 1]]


def test_pseudo_cpc_with_unit_weights_is_cross_cpc_and_new_code_positions_count_less():
    g = torch.Generator().manual_seed(0)
    b, steps = 3, 2
    semantic = {"audio": torch.randn(b, T, 4, generator=g)}
    predictions = {"audio": torch.randn(b, T - steps, steps, 4, generator=g)}
    pseudo_prediction = torch.randn(b, T - steps, steps, 4, generator=g)
    codebook = torch.randn(6, 4, generator=g)
    pseudo = pseudo_modality(semantic["audio"], torch.cdist(semantic["audio"], codebook).pow(2), codebook, 6,
                             ReplayConfig())
    losses = pseudo_cpc_losses(predictions, semantic, pseudo_prediction, pseudo.sequence, pseudo.weights, None,
                               "targets")
    reference = cross_cpc_losses({"audio": predictions["audio"], "pseudo": pseudo_prediction},
                                 {"audio": semantic["audio"], "pseudo": pseudo.sequence}, None)
    assert torch.allclose(losses[("audio", "pseudo")], reference[("audio", "pseudo")])
    assert torch.allclose(losses[("pseudo", "audio")], reference[("pseudo", "audio")])
    entries = cpc_entry_losses(predictions["audio"], pseudo.sequence, 1, "targets")        # (1 k b)
    pseudo.weights[0, 3] = 0.0                                            # clip 0's target at t + k = 3 (t=1, k=2)
    weighted = pseudo_cpc_losses(predictions, semantic, pseudo_prediction, pseudo.sequence, pseudo.weights, 1,
                                 "targets")
    kept = entries.clone()
    kept[0, 1, 0] = 0.0
    assert torch.allclose(weighted[("audio", "pseudo")], kept.mean())


def test_farthest_points_take_what_the_anchors_do_not_cover():
    pool = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [5.0, 1.0]])
    # [5, 1] is farthest from the anchor; then [1, 0] and [5, 0] are both 1 away from anchor-or-chosen: the
    # first of them wins
    assert farthest_points(pool, torch.zeros(1, 2), 2).tolist() == [[5.0, 1.0], [1.0, 0.0]]


# ---------------------------------------------------------------- phases

def test_second_phase_carries_video_expands_the_codebook_and_replays_text(tmp_path):
    torch.manual_seed(0)
    first = COMETTask(comet_config())
    _train(first, 3)
    first.end_phase_(iter([comet_batch(("video", "text"), b=6, seed=5)]), "cpu")
    vt = write_phase(tmp_path / "vt", first, first.cfg, 3)
    vt_codebook = first.model.quantizer.codebook.clone()

    torch.manual_seed(1)
    second = COMETTask(comet_config(("audio", "text"), new_codes=4, protect=True))
    init = read_init_source(str(tmp_path / "vt"))             # a run directory's checkpoints: the latest
    assert init.checkpoint == vt and "ewc_fisher" in init.extra
    load_init_state_(second.model, init)
    cfg = second.begin_phase_(init, second.cfg)
    assert cfg.carried == ("video",) and cfg.carried_feature_dims == {"video": 12} and cfg.quantizer.num_codes == 12
    assert second.model.inherited == 8 and torch.equal(second.model.quantizer.codebook[:8], vt_codebook)
    for name, value in first.model.encoders["video"].state_dict().items():
        assert torch.equal(second.model.encoders["video"].state_dict()[name], value)
    assert not any(p.requires_grad for p in second.model.encoders["video"].parameters())
    assert "video" not in second.model.adapter.specific          # phase 1's adapter snapshot encodes video
    assert not any(p.requires_grad for p in second.model.semantic.carried["video"].parameters())
    # the appended codes are placed on the mediator's vectors of the first training batch, once
    first_batch = second.prepare_batch(comet_batch(("audio", "text"), seed=20))
    with torch.no_grad():
        text_vectors = second.model.semantic["text"](first_batch["text"]).flatten(0, 1)
    second.compute_loss(first_batch, 0)
    placed = second.model.quantizer.codebook[8:]
    assert torch.cdist(placed, text_vectors).min(1).values.max().item() < 1e-5
    assert not second.model._pending and not bool(second.model.new_codes_pending)
    metrics = _train(second, 2, seed=20)
    assert {"pm", "pm_audio2pseudo", "pm_pseudo2text", "ewc", "gate"} <= set(metrics)
    assert (second.model.quantizer.last_used[:, :8] == second.model.quantizer.step).all()   # inherited: kept alive
    video = comet_batch(("video",), b=2)
    codes, vectors = second.model.eval().segment_codes(video, "video")
    assert codes.shape == (2, T) and vectors.shape == (2, T, D)
    with pytest.raises(RuntimeError, match="did not start from a previous phase"):
        COMETTask(comet_config(("audio", "text"), new_codes=4)).compute_loss(
            second.prepare_batch(comet_batch(("audio", "text"))), 0)


def _next_phase(previous_dir, modalities, seed: int, **overrides) -> COMETTask:
    torch.manual_seed(seed)
    task = COMETTask(comet_config(modalities, new_codes=4, **overrides))
    init = read_init_source(str(previous_dir))
    load_init_state_(task.model, init)
    task.begin_phase_(init, task.cfg)
    return task


def _first_phase(directory, adapter: AdapterConfig, steps: int) -> tuple[COMETTask, Path]:
    """A trained video–text phase and its checkpoint in run directory ``directory`` (with its EWC handover)."""
    torch.manual_seed(0)
    first = COMETTask(comet_config(adapter=adapter))
    _train(first, steps)
    first.end_phase_(iter([comet_batch(("video", "text"), b=6, seed=5)]), "cpu")
    return first, write_phase(directory, first, first.cfg, steps)


def test_frozen_carried_adapters_encode_earlier_modalities_exactly_as_their_phase_left_them(tmp_path):
    frozen = AdapterConfig(experts=3, freeze_carried=True)
    first, vt = _first_phase(tmp_path / "vt", frozen, 3)
    video = comet_batch(("video",), b=2, seed=9)
    with torch.no_grad():
        video_z = first.model.segment_semantic(video, "video")
    second = _next_phase(vt, ("audio", "text"), 1, adapter=frozen)
    assert "specific.video" not in second.ewc_fisher and "common.weight" in second.ewc_fisher
    assert not any(p.requires_grad for p in second.model.semantic.carried["video"].parameters())
    _train(second, 3, seed=30)
    second.end_phase_(iter([comet_batch(("audio", "text"), b=6, seed=6)]), "cpu")
    assert not torch.equal(second.model.adapter.common.weight, first.model.adapter.common.weight)   # live moved
    at = write_phase(tmp_path / "at", second, second.cfg, 3)
    with torch.no_grad():
        audio_z = second.model.segment_semantic(comet_batch(("audio",), b=2, seed=9), "audio")
        assert torch.allclose(second.model.segment_semantic(video, "video"), video_z, rtol=1e-5, atol=1e-6)
    third = _next_phase(at, ("image", "text"), 2, adapter=frozen,
                        quantizer=QuantizerConfig(num_codes=12, dim=D, reset_steps=3))   # phase 2's grown codebook
    _train(third, 2, seed=40)
    # phase 1's video (the snapshot carried on) and phase 2's audio (a snapshot of its live adapter), up to float
    # rounding (the snapshot's einsum runs over one modality's weights)
    with torch.no_grad():
        assert torch.allclose(third.model.segment_semantic(video, "video"), video_z, rtol=1e-5, atol=1e-6)
        assert torch.allclose(third.model.segment_semantic(comet_batch(("audio",), b=2, seed=9), "audio"), audio_z,
                              rtol=1e-5, atol=1e-6)


def test_without_snapshots_a_carried_modality_keeps_its_frozen_specific_layer_in_the_live_adapter(tmp_path):
    live = AdapterConfig(experts=3, freeze_carried=False)
    first, vt = _first_phase(tmp_path / "vt", live, 2)
    second = _next_phase(vt, ("audio", "text"), 1, adapter=live)
    assert len(second.model.semantic.carried) == 0 and "specific.video" in second.ewc_fisher
    specific = second.model.adapter.specific["video"]
    assert not specific.requires_grad and torch.equal(specific, first.model.adapter.specific["video"])


def test_rename_trains_an_image_modality_on_the_video_stream():
    torch.manual_seed(0)
    task = COMETTask(comet_config(rename={"video": "image"}))
    assert task.modalities == ("image", "text") and "image" in task.model.encoders
    features = task.prepare_batch(comet_batch(("video", "text")))
    assert set(features) == {"image", "text"}
    with pytest.raises(ValueError, match="rename"):
        comet_config(rename={"video": "text"})


@pytest.mark.parametrize("phases, prefix", [("continual_comet.yaml", "comet_"),
                                            ("continual_comet_demo.yaml", "comet_demo_")])
def test_continual_comet_phases_file_checks_and_chains_three_phase_configs(capsys, phases, prefix):
    assert continual_main([str(REPO / "launch" / "configs" / phases), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "sbatch" in line]
    assert [line.split()[0] for line in lines] == [f"CONFIG=launch/configs/{prefix}{phase}.yaml"
                                                   for phase in ("vt", "at", "it")]
    assert "run.init_from=" not in lines[0] and all("run.init_from=" in line for line in lines[1:])


# ---------------------------------------------------------------- the continual bench

def test_continual_world_adds_a_still_image_and_spoken_captions():
    from trainer.programs.bench.continual_features import ContinualWorld
    from trainer.programs.bench.config import ContinualWorldConfig

    world = ContinualWorld(ContinualWorldConfig())
    data = world.sample(20, seed=4)
    t = world.base.cfg.segments
    assert data.features["text"].shape == (20, t, 32) and data.features["text_mask"].shape == (20, t)
    assert not data.features["text_mask"][:, -1].any()                # captions are padded to T tokens
    image = data.features["image"]
    assert image.shape == (20, t, 64) and (image - image.mean(1, keepdim=True)).abs().max() < 0.3   # held still
    assert torch.equal(data.segment_labels["image"], data.clip_label.unsqueeze(1).expand(20, t))
    assert data.features["speech"].shape == (20, t, 64)
    assert torch.equal(world.sample(20, seed=4).features["image"], image)


def _bench_row(method: str, unseen: tuple[float, float], video_text: tuple[float, float, float]) -> dict:
    """A continual-bench row whose every Table 1 cell after phase 2 / 3 is ``unseen``, video↔text per phase."""
    from trainer.programs.bench.continual_features import TABLE1_TASKS

    def phase(i: int) -> dict:
        cells = {f"{t}/{d}": {"cross": unseen[i - 1]} for t in TABLE1_TASKS for d in ("V→A", "A→V")} if i else {}
        seen = {"video": {"avg": video_text[i]}} | ({"audio": {"avg": 0.5}} if i else {})
        return {"unseen": cells, "seen": seen}

    return {"method": method, "phases": [phase(i) for i in range(3)]}


def test_continual_bench_checks_the_targets_on_the_mean_over_seeds():
    from trainer.programs.bench.continual_features import check_targets
    from trainer.programs.bench.config import ContinualConfig

    runs = [[_bench_row("dcid", (0.8, 0.7), (0.9, 0.8, 0.7)), _bench_row("comet", (0.7, 0.8), (0.9, 0.9, 0.8))],
            [_bench_row("dcid", (0.6, 0.7), (0.9, 0.8, 0.5)), _bench_row("comet", (0.8, 0.6), (0.9, 0.9, 0.5))]]
    checks = check_targets(runs, ContinualConfig())
    assert [(name, met) for name, met, _ in checks] == [
        ("comet > DCID: unseen-pair Avg after phase 2", True),        # 75 vs 70, better in 1 of 2 seeds
        ("comet > DCID: unseen-pair Avg after phase 3", False),       # 70 vs 70
        ("comet < DCID: forgetting", True)]                           # video drop 10 / 40 vs 20 / 40 points
    assert checks[0][2] == "75.0 vs 70.0 (mean of 2 seed(s); better in 1)"
    assert checks[2][2] == "25.0 vs 30.0 (mean of 2 seed(s); better in 1)"
    assert check_targets([runs[0][1:]], ContinualConfig()) == []      # no DCID row, nothing to compare


def test_raw_continual_bench_reads_each_sets_named_pair_and_checks_the_unseen_margin():
    from trainer.programs.bench.continual_pairs import EVAL_SETS, format_table, stage_numbers, targets

    def pair(mean: float, chance: float, seen: bool) -> dict:
        recall = {"R@1": mean, "R@5": mean, "R@10": mean}
        return {"mean": recall, "chance": {"a→b": {k: chance for k in recall}, "b→a": {k: chance for k in recall}},
                "seen": seen}

    report = {"zero_shot_retrieval": {"datasets": {
        "video_text": {"pairs": {"video↔text": pair(0.2, 0.01, True)}},
        "audio_text": {"pairs": {}, "note": "the model codes ['text'] of its modalities ['audio', 'text']"},
        "image_audio": {"pairs": {"audio↔image": pair(0.1, 0.04, False)}},
        # the demo clips carry captions too: their video↔audio pair is the one read
        "video_audio": {"pairs": {"video↔text": pair(1.0, 0.0, True), "audio↔text": pair(1.0, 0.0, True),
                                  "video↔audio": pair(0.06, 0.04, False)}}}}}
    sets = stage_numbers(report)
    assert set(sets) == {"video_text", "image_audio", "video_audio"}
    assert sets["video_audio"]["recall"]["R@1"] == pytest.approx(6.0) and not sets["video_audio"]["seen"]
    assert sets["image_audio"]["chance"]["R@5"] == pytest.approx(4.0)
    results = {"comet": [{"phase": "image_text", "sets": sets, "train_s": 1.0}]}
    (check,) = targets(results)
    assert check.met and check.value == pytest.approx(10.0) and check.bound == pytest.approx(6.0)   # 1.5 x chance
    lines = format_table(results, "title")
    assert lines[2].split()[2:] == list(EVAL_SETS)
    assert "20.0 / 20.0 / 20.0 s" in lines[4] and "—" in lines[4] and "10.0 / 10.0 / 10.0 u" in lines[4]
