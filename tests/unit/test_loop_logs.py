"""What the main job's loop writes about itself: the metrics log across a crash and resume, the data counters,
the stop reason each rank prints."""

from __future__ import annotations

import json
import signal

import torch

from trainer.configs.data import DataConfig
from trainer.configs.job import JobConfig, OptimConfig, RunConfig
from trainer.loop import METRICS_FILE, data_metrics, train_in_memory
from trainer.configs.model import EncoderConfig, QuantizerConfig, UniCodeConfig
from trainer.runtime import StopRequest
from trainer.configs.tracking import TrackingConfig


def _job(run_dir, max_steps: int) -> JobConfig:
    model = UniCodeConfig(encoder=EncoderConfig(semantic_dim=16, specific_dim=8, ff_dim=32, dropout=0.0,
                                                specific_hidden=16, decoder_hidden=16),
                          quantizer=QuantizerConfig(num_codes=8, dim=16), spatial_patches={})
    return JobConfig(run=RunConfig(dir=str(run_dir), max_steps=max_steps, ckpt_every=2, progress=False),
                     data=DataConfig(kind="memory", batch_size=4, num_workers=0), model=model,
                     optim=OptimConfig(lr=1e-3), tracking=TrackingConfig(enabled=False, log_every=1))


def test_metrics_log_holds_each_step_once_after_a_crash_and_resume(tmp_path):
    g = torch.Generator().manual_seed(0)
    features = {"audio": torch.randn(16, 5, 12, generator=g), "video": torch.randn(16, 5, 16, generator=g)}
    train_in_memory(_job(tmp_path, 4), features)
    log = tmp_path / METRICS_FILE
    # a crash after steps 5 and 6 were logged but before their checkpoint: the rerun trains them again
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines, json.dumps({"step": 5, "loss": -1.0}), json.dumps({"step": 6, "loss": -1.0})])
                   + "\n")
    train_in_memory(_job(tmp_path, 6), features)                        # resumes from the step-4 checkpoint
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] != -1.0 for r in rows)
    assert rows[-1]["data/skipped"] == 0 and rows[-1]["data/ignored_members"] == 0


def test_ignored_members_are_not_skipped_samples():
    counters = {"bad_video": 1, "missing_member": 2, "bad_json": 0, "unreadable": 0, "ignored_member": 3}
    assert data_metrics(counters) == {"data/skipped": 3, "data/ignored_members": 3, "data/skipped_bad_video": 1,
                                      "data/skipped_missing_member": 2}


def test_stop_reason_names_the_signal_the_file_or_another_rank(tmp_path):
    stop_file = tmp_path / "STOP"
    request = StopRequest()
    assert request.reason(stop_file) == "a signal or stop file seen by another rank"
    stop_file.touch()
    assert request.reason(stop_file) == "STOP"
    request._handle(signal.SIGUSR1, None)
    assert request.reason(stop_file) == "SIGUSR1"
