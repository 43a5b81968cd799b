"""The GPU check (issue #31): what the CPU suite cannot show, on one CUDA GPU, in about 8 minutes on an H100.

Run by `make gpu-check` (docs/performance.md, "GPU check"); every test skips where ``torch.cuda.is_available()`` is
False, so `make test` collects and skips them. Every figure goes into the session's report (tests/gpu/conftest.py).

- a bf16-autocast training step (``trainer.runtime.training_precision``) equals the fp32 step on the same batch within
  ``BF16_STEP_ULPS`` bf16 ulps, and the MM-EMA statistics (codebook, EMA counts and sums, the step accumulator) stay
  fp32;
- the main job under the supervisor (``cmg launch``) with DeepSpeed ZeRO-2 and nccl on the GPU: raw clip shards decoded
  by 2 DataLoader workers on the CPU, the tiny backbones (``dtype: auto``: bf16) on the GPU in the training process,
  stopped by SIGUSR1 at an unplanned step, exit 75, resumed, and then bit-identical to an uninterrupted 20-step run
  (losses at every step, every model tensor; ``run.deterministic=true``); the log names the optimizer (DeepSpeed's
  ZeRO optimizer over the loop's torch AdamW); 2 processes only where the machine has 2 GPUs (nccl refuses two ranks
  on one device);
- a model trained on the CPU (fp32 backbones) and exported with ``CMGModel.save_pretrained`` loads on the GPU with bf16
  backbones and encodes clips (the fingerprint names the weights, not the compute dtype);
- ``trainer.programs.bench.core --device cuda``, ``trainer.programs.bench.scaling`` on gpu_zero2.yaml and
  ``shards.bench --device cuda``: step ms, achieved TFLOP/s against a bf16 matmul, peak GPU memory, supply vs demand.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from job_utils import (
    REPO, assert_same_tensors, final_model, job_command, job_env, losses, make_clip_shards, read_metrics, run_job,
    status, wait_for_steps,
)
from numerics import reordered_tolerance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "needs a CUDA GPU (torch.cuda.is_available() is False): run `make gpu-check` on a GPU machine "
    "(docs/performance.md, \"GPU check\")"))

# A bf16 step against the fp32 step, in bf16 ulps (torch.finfo(torch.bfloat16).eps = 2^-7: 8 significand bits, unit
# roundoff u = 2^-8) of the compared quantity's magnitude (tests/support/numerics.py). Under autocast every matmul
# rounds its two inputs to bf16 (relative error <= u each; fp32 accumulation adds fp32-sized errors only), so one
# matmul is off by at most 2u = 1 ulp of the magnitude of its terms. The longest chain of matmuls from the inputs to
# the loss and back to a gradient in the Uni-Code model is the encoders' attention and feed-forward layers plus the
# heads, forward and backward: at most 8 such stages, and the quantizer's distances run in fp32 (autocast off,
# trainer/models/quantizer.py). 8 ulps = 6.25 % of the magnitude is that worst case added up; the report records the
# ulps each comparison used, so the budget can be set from measurements once the check has run on a GPU.
BF16_STEP_ULPS = 8
STEPS = 20                   # the uninterrupted run (more when the stop lands late); the stopped run resumes to it
STOPPED_RUN_STEPS = 400      # room for the SIGUSR1 to land mid-run: a tiny step on a GPU takes milliseconds
RESUMED_STEPS = 4            # at least this many steps after the resume
BATCH, SEGMENTS = 16, 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_clip_shards(tmp_path_factory.mktemp("data"), num_clips=16, seconds=4, clips_per_shard=4)


def _used_ulps(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(the largest difference in bf16 ulps of ``expected``'s largest entry, that difference)."""
    scale = expected.abs().max().item()
    diff = (actual.double() - expected.double()).abs().max().item()
    return diff / reordered_tolerance(scale, 1, torch.bfloat16), diff


# ---------------------------------------------------------------------------------------------- bf16 step
def test_bf16_autocast_step_equals_the_fp32_step_and_keeps_mm_ema_fp32(gpu_report):
    from trainer.configs.model import UniCodeConfig
    from trainer.runtime import training_precision
    from trainer.tasks import UniCodeTask

    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    features = {"audio": torch.randn(BATCH, SEGMENTS, 128, generator=generator).to(device),
                "video": torch.randn(BATCH, SEGMENTS, 7, 7, 512, generator=generator).to(device)}

    def one_step(precision: torch.device | str):
        torch.manual_seed(0)
        task = UniCodeTask(UniCodeConfig(modalities=("audio", "video"))).to(device)
        torch.manual_seed(1)
        with training_precision(precision):
            loss, _ = task.compute_loss(features, 0)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in task.model.parameters() if p.grad is not None])
        return task, loss.detach(), grads

    _, loss32, grads32 = one_step("cpu")          # the CPU's precision (fp32) on the GPU's tensors
    task16, loss16, grads16 = one_step(device)    # bf16 autocast
    figures = gpu_report["bf16 autocast step vs fp32 step (Uni-Code AV, B=16, T=10)"] = {}   # kept if an assert fails
    for what, actual, expected in (("loss", loss16, loss32), ("gradients", grads16, grads32)):
        used, diff = _used_ulps(actual, expected)
        figures[f"{what}: max difference"] = f"{diff:.3g}"
        figures[f"{what}: bf16 ulps used (budget {BF16_STEP_ULPS})"] = f"{used:.2f}"
        assert torch.isfinite(actual).all(), what
        assert used <= BF16_STEP_ULPS, f"{what}: bf16 step off the fp32 step by {used:.1f} bf16 ulps"
    # a few more bf16 steps with the optimizer and the MM-EMA update: the statistics stay fp32
    optimizer = torch.optim.AdamW(task16.model.parameters(), lr=1e-3)
    optimizer.zero_grad(set_to_none=True)
    for step in range(1, 4):
        with training_precision(device):
            loss, _ = task16.compute_loss(features, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        task16.after_optimizer_step_()
    quantizer = task16.model.quantizer
    dtypes = {name: buf.dtype for name, buf in quantizer.named_buffers() if buf.is_floating_point()}
    figures["quantizer float buffers after 4 bf16 steps"] = ", ".join(f"{n}: {d}" for n, d in sorted(dtypes.items()))
    assert {"codebook", "ema_count", "ema_sum", "stats_accumulator"} <= set(dtypes)
    assert set(dtypes.values()) == {torch.float32}, dtypes


# ---------------------------------------------------------------------------------------------- the main job
@pytest.mark.parametrize("processes", [1, 2])
def test_main_job_zero2_nccl_sigusr1_resume_is_bit_exact(tmp_path, shards, processes, gpu_report):
    if processes > torch.cuda.device_count():
        pytest.skip(f"{processes} processes need {processes} GPUs: nccl refuses two ranks on one device "
                    "('Duplicate GPU detected') and accelerate gives rank i cuda:i")
    common = dict(processes=processes, zero=2, plain=False, machine="gpu")
    # decoding workers on the CPU, backbones (dtype auto) on the GPU; deterministic kernels: CUDA's index_add_ (the
    # MM-EMA statistics) otherwise sums in the order its atomics land (docs/training.md, "Devices and precision")
    overrides = ["data.num_workers=2", "run.deterministic=true"]
    stopped_dir = tmp_path / "stopped"
    proc = subprocess.Popen(job_command(stopped_dir, shards,
                                        overrides=[*overrides, f"run.max_steps={STOPPED_RUN_STEPS}"], **common),
                            cwd=REPO, env=job_env("gpu"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(stopped_dir, proc, 2, timeout=300)
    proc.send_signal(signal.SIGUSR1)              # to the supervisor: one agreed stop
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    stopped = status(stopped_dir)
    assert stopped["state"] == "stopped" and 2 <= stopped["step"] < STOPPED_RUN_STEPS, stopped
    # the demo's learning rate is constant after its warm-up: where a run ends changes none of the steps before it
    # (tests/system/test_main_job.py)
    last = max(STEPS, stopped["step"] + RESUMED_STEPS)
    optimizer = re.search(r"\[cmg\] optimizer: (.*)", out + err)
    assert optimizer is not None, out[-2000:]
    figures = gpu_report[f"main job, DeepSpeed ZeRO-2, nccl, {processes} process(es)"] = {
        "optimizer": optimizer.group(1), "stopped by SIGUSR1 at step": stopped["step"]}
    # DeepSpeed steps the loop's torch AdamW inside its ZeRO-2 optimizer (docs/performance.md, "GPU check")
    assert re.fullmatch(r"DeepSpeedZeroOptimizer over AdamW \(fused=\w+\) on cuda(:\d+)?", optimizer.group(1)), \
        optimizer.group(1)

    run_job(stopped_dir, shards, overrides=[*overrides, f"run.max_steps={last}"], timeout=300, **common)
    assert status(stopped_dir) == {"state": "finished", "step": last}
    reference = tmp_path / "reference"
    start = time.perf_counter()
    run_job(reference, shards, overrides=[*overrides, f"run.max_steps={last}"], timeout=300, **common)
    wall = time.perf_counter() - start
    assert losses(stopped_dir) == losses(reference)          # every step, bit for bit
    assert_same_tensors(final_model(stopped_dir), final_model(reference))
    step_s = [r["perf/step_s"] for r in read_metrics(reference)[2:]]
    figures |= {
        "resumed to step": last, "losses equal the uninterrupted run's": "bit for bit",
        "uninterrupted run wall s (start-up included)": f"{wall:.1f}",
        "median step s after the first 2": f"{sorted(step_s)[len(step_s) // 2]:.4f}" if step_s else "n/a",
        "last loss": losses(reference)[last]}


# ---------------------------------------------------------------------------------------------- backbones and export
def test_tiny_backbones_on_the_gpu_encode_decoded_clips_as_the_cpu_does(shards, gpu_report):
    """Clip shards -> 2 decoding workers on the CPU -> the tiny backbones with ``dtype: auto`` (bf16 on the GPU)."""
    from trainer.backbones import FrozenBackbones, load_backbones_config
    from trainer.configs.data import DataConfig, DecodeConfig
    from trainer.data.stream import ClipStream

    cfg = load_backbones_config(REPO / "launch/configs/backbones/tiny.yaml")
    batch = next(iter(ClipStream(DataConfig(urls=shards, batch_size=4, num_workers=2, decode=DecodeConfig(seconds=4)))))
    gpu, cpu = FrozenBackbones(cfg, "cuda"), FrozenBackbones(cfg, "cpu")
    assert {e.dtype for e in gpu.encoders.values()} == {torch.bfloat16}
    assert gpu.describe() == cpu.describe()                # the same fingerprints: the same weights
    on_gpu, on_cpu = gpu.encode(batch), cpu.encode(batch)
    figures = gpu_report["tiny backbones, bf16 on the GPU vs fp32 on the CPU"] = {}
    for name, expected in on_cpu.items():
        if not expected.is_floating_point():
            assert torch.equal(on_gpu[name].cpu(), expected), name
            continue
        used, diff = _used_ulps(on_gpu[name].cpu(), expected)
        figures[f"{name}: bf16 ulps used (budget {BF16_STEP_ULPS})"] = f"{used:.2f}"
        assert on_gpu[name].dtype == torch.float32 and used <= BF16_STEP_ULPS, (name, used)


def test_cpu_trained_export_loads_and_encodes_on_the_gpu(tmp_path, shards, gpu_report):
    from trainer import CMGModel

    run_dir = tmp_path / "cpu-run"
    env = job_env() | {"CUDA_VISIBLE_DEVICES": ""}          # trained on the CPU: fp32 backbones
    done = subprocess.run(job_command(run_dir, shards, overrides=["run.max_steps=4"]), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cpu = CMGModel.from_pretrained(run_dir)
    cpu.save_pretrained(tmp_path / "export")
    gpu = CMGModel.from_pretrained(tmp_path / "export", device="cuda")
    assert {e.dtype for e in gpu.backbones.encoders.values()} == {torch.bfloat16}
    assert gpu.describe()["backbones"] == cpu.describe()["backbones"]
    clips = sorted(str(p) for p in (Path(shards.split("/shards/")[0]) / "clips").glob("*.mp4"))
    inputs = {stream: clips for stream in set(cpu.streams.values()) if stream != "text"}
    on_cpu, on_gpu = cpu.encode(**inputs), gpu.encode(**inputs)
    assert on_gpu.keys() == on_cpu.keys()
    figures = gpu_report["CPU-trained export encoding on the GPU (bf16 backbones)"] = {}
    for modality, codes in on_gpu.items():
        assert codes.codes.shape == on_cpu[modality].codes.shape
        same = (codes.codes == on_cpu[modality].codes).float().mean().item()
        figures[f"{modality}: share of segments with the CPU's code"] = f"{same:.3f}"


# ---------------------------------------------------------------------------------------------- benchmarks
def _bench(args: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    env = job_env("gpu")
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{what}: {done.stderr[-3000:]}"
    return done


def test_bench_core_on_the_gpu(gpu_report_dir, gpu_report):
    out = gpu_report_dir / "bench_core.json"
    _bench(["trainer.programs.bench.core", "--device", "cuda", "--configs", "av,avt", "--steps", "10", "--warmup", "3",
            "--matmul-size", "8192", "--json", str(out), "--markdown", str(gpu_report_dir / "bench_core.md")],
           "bench.core", 240)
    figures = {}
    for row in json.loads(out.read_text())["rows"]:
        ratio = row["step_gflops"] / row["matmul_gflops"]
        figures[row["name"]] = (f"step {row['step_ms']:.1f} ms, {row['step_gflops'] / 1e3:.2f} TFLOP/s, "
                                f"{ratio:.3f} of a bf16 matmul ({row['matmul_gflops'] / 1e3:.0f} TFLOP/s), "
                                f"peak {row['peak_gpu_mib']:.0f} MiB")
        assert row["device"] == torch.cuda.get_device_name(0) and row["peak_gpu_mib"] > 0
        assert 0 < ratio <= 1.5, ratio                        # a step cannot beat the matmul by much
    gpu_report["bench.core --device cuda (paper shapes, bf16 autocast)"] = figures


def test_bench_scaling_on_the_gpu(gpu_report_dir, gpu_report):
    ranks = "1,2" if torch.cuda.device_count() > 1 else "1"
    done = _bench(["trainer.programs.bench.scaling", "--accelerate-config", "launch/accelerate/gpu_zero2.yaml",
                   "--ranks", ranks, "--negatives", "global", "--threads", "4", "--no-collectives", "--timeout", "240"],
                  "bench.scaling", 300)
    (gpu_report_dir / "bench_scaling.md").write_text(f"```\n{done.stdout}\n```\n")
    assert "clips/s" in done.stdout, done.stdout[-2000:]
    gpu_report["bench.scaling on launch/accelerate/gpu_zero2.yaml"] = {"ranks": ranks, "table": "bench_scaling.md"}


def test_shards_bench_supply_against_the_gpu_step(gpu_report_dir, gpu_report):
    out = gpu_report_dir / "bench_decode.json"
    _bench(["shards.bench", "--device", "cuda", "--clips", "8", "--seconds", "4", "--repeats", "1", "--steps", "5",
            "--json", str(out), "--markdown", str(gpu_report_dir / "bench_decode.md")], "shards.bench", 300)
    figures = {}
    for row in json.loads(out.read_text())["supply"]:
        assert row["device"] == torch.cuda.get_device_name(0) and row["demand"] > 0
        figures[row["name"]] = (f"step {row['step_s'] * 1e3:.1f} ms + backbones {row['backbones_s'] * 1e3:.1f} ms: "
                                f"consumes {row['demand']:.0f} clips/s, one core decodes {row['decode_per_core']:.1f} "
                                f"clips/s: {row['cores']:.1f} decoding cores per GPU process")
    gpu_report["shards.bench: decoding supply vs the GPU step's demand"] = figures
