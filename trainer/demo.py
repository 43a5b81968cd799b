"""``make demo`` / ``python -m trainer.demo``: the main job on its embedded default.

1. synthesise demo clips into ``demo_data/clips`` (kept if already complete);
2. pack them into shards in ``demo_data/shards`` (kept if the manifest matches);
3. train Uni-Code on them: 2 CPU processes, DeepSpeed ZeRO-2 over gloo, tiny random-init backbones
   (``accelerate launch --config_file launch/accelerate/cpu_zero2.yaml trainer/main.py --config
   launch/configs/demo.yaml``), logging to MLflow in the run directory;
4. print where the checkpoint is and the command that opens the MLflow UI.

A second ``make demo`` resumes the finished run (nothing to do) unless ``--fresh`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shards.synth import SynthConfig, clip_key, synthesise
from shards.write import write_shards
from trainer.data.stream import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[1]

SHARD_PATTERN = "train-%06d.tar"


@dataclass
class DemoConfig:
    data_dir: str = "demo_data"
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(num_clips=96, classes=5, seconds=10, seed=0))
    shard_max_count: int = 8  # samples per shard: 96 clips -> 12 shards
    job_config: str = str(REPO / "launch" / "configs" / "demo.yaml")
    accelerate_config: str = str(REPO / "launch" / "accelerate" / "cpu_zero2.yaml")
    processes: int = 2
    run_dir: str = "runs/demo"


def prepare_clips(cfg: DemoConfig) -> Path:
    clips = Path(cfg.data_dir) / "clips"
    expected = [clips / f"{clip_key(cfg.synth.seed, i)}.{member}"
                for i in range(cfg.synth.num_clips) for member in ("mp4", "json", "txt")]
    if all(p.is_file() for p in expected):
        print(f"clips: reusing {cfg.synth.num_clips} clips in {clips}")
    else:
        synthesise(cfg.synth, clips)
        print(f"clips: wrote {cfg.synth.num_clips} clips to {clips}")
    return clips


def prepare_shards(cfg: DemoConfig, clips: Path) -> str:
    """Write shards unless a manifest of this source with the right total exists; returns the shard URLs."""
    out = Path(cfg.data_dir) / "shards"
    manifest_path = out / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("source") == str(clips) and manifest.get("total") == cfg.synth.num_clips:
        print(f"shards: reusing {len(manifest['shards'])} shards in {out}")
    else:
        manifest = write_shards(clips, str(out / SHARD_PATTERN), max_count=cfg.shard_max_count)
        print(f"shards: wrote {manifest['total']} samples into {len(manifest['shards'])} shards in {out}")
    return str(out / f"train-{{000000..{len(manifest['shards']) - 1:06d}}}.tar")


def train(cfg: DemoConfig, urls: str, fresh: bool) -> int:
    run_dir = Path(cfg.run_dir)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.accelerate_config,
           "--num_processes", str(cfg.processes), "--main_process_port", str(free_port()),
           str(REPO / "trainer" / "main.py"), "--config", cfg.job_config, f"data.urls={urls}", f"run.dir={run_dir}"]
    print("train:", " ".join(cmd[2:]), flush=True)
    code = subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if code != 0:
        print(f"training failed with exit code {code}", file=sys.stderr)
        return code
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    print(f"checkpoint: {run_dir / 'checkpoints' / latest}")
    print(f"MLflow UI:  {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri "
          f"sqlite:///{(run_dir / 'mlflow.db').resolve()} --port 5000   # then open http://127.0.0.1:5000")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__.split("\n\n")[0])
    d = DemoConfig()
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--run-dir", default=d.run_dir)
    p.add_argument("--processes", type=int, default=d.processes)
    p.add_argument("--fresh", action="store_true", help="delete the run directory first (else resume it)")
    a = p.parse_args(argv)
    cfg = DemoConfig(data_dir=a.data_dir, run_dir=a.run_dir, processes=a.processes)
    clips = prepare_clips(cfg)
    urls = prepare_shards(cfg, clips)
    return train(cfg, urls, a.fresh)


if __name__ == "__main__":
    sys.exit(main())
