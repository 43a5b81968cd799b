"""Every config error of the main job fails before any work: ``trainer.main.main`` returns 2, names the dotted key
on stderr and creates no run directory (no process group, model or data loader exists yet). Also what the
continual launcher checks of each phase before it submits anything. Nothing here trains."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from job_utils import job_command, make_clip_shards
from task_utils import write_phases

from trainer.checkpoint_format import CheckpointManager, CheckpointMeta
from trainer.checkpoint import save_rank_state, write_model_state
from trainer.configs.load import ConfigError, load_config
from trainer.configs.data import DataConfig
from trainer.data.sources import data_source
from trainer.job import check_batch_size, validate_job
from trainer.configs.job import JobConfig
from trainer.main import main
from trainer.programs.continual import main as continual_main


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Two real clip shards of 4 clips (train-000000.tar, train-000001.tar) and their manifest."""
    return make_clip_shards(tmp_path_factory.mktemp("data"), num_clips=8, clips_per_shard=4)


def job_args(run_dir: Path, shards: str, *overrides: str) -> list[str]:
    """trainer/main.py's arguments as the system tests run it (the demo config, shrunk)."""
    command = job_command(run_dir, shards, overrides=list(overrides))
    assert command[1].endswith("main.py")
    return command[2:]


def checkpoint(root: Path, model: bool = True, meta: dict | None = None) -> Path:
    """A complete checkpoint of step 4 under ``<root>/checkpoints``, written as the job writes one (with a model.pt
    unless ``model`` is False, with ``meta`` in its meta.json); its directory."""
    def write(tmp: Path) -> None:
        if model:
            write_model_state(tmp, {"w": torch.zeros(2)})
        save_rank_state(tmp, {})

    return CheckpointManager(root / "checkpoints").save(4, write, CheckpointMeta(4, 1, **(meta or {})))


def assert_refused(argv: list[str], run_dir: Path, key: str, capsys, *also: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config error: " in err and key in err.split("config error: ", 1)[1], err
    for text in also:
        assert text in err, err
    assert not run_dir.exists()                       # nothing was started


def test_the_base_job_of_these_tests_is_valid(tmp_path, shards):
    args = job_args(tmp_path / "run", shards)
    validate_job(load_config(JobConfig, args[1], args[2:]))


# ---------------------------------------------------------------------------------------------- data.urls
def test_shards_the_manifest_does_not_list_are_refused(tmp_path, shards, capsys):
    three = shards.replace("000001}", "000002}")      # train-000002.tar is in no manifest
    assert three != shards
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, three), run_dir, "data.urls", capsys, "train-000002.tar", "(1 shards)")


def test_resampled_clip_shards_need_no_manifest_entry(tmp_path, shards):
    """Resampled clip shards are drawn without counting their samples: the stream never reads the manifest."""
    args = job_args(tmp_path / "run", shards.replace("000001}", "000002}"), "data.resampled=true",
                    "data.epoch_batches=2")
    validate_job(load_config(JobConfig, args[1], args[2:]))


def test_urls_that_do_not_expand_are_refused(tmp_path, shards, capsys):
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, shards.replace("}", "")), run_dir, "data.urls", capsys, "does not expand")


# ---------------------------------------------------------------------------------------------- run.resume / init_from
@pytest.mark.parametrize("flag", [False, True])
def test_a_missing_resume_path_is_refused(tmp_path, shards, capsys, flag):
    run_dir, missing = tmp_path / "run", tmp_path / "elsewhere" / "checkpoints"
    argv = job_args(run_dir, shards) + (["--resume", str(missing)] if flag else [f"run.resume={missing}"])
    assert_refused(argv, run_dir, "run.resume", capsys, str(missing))


def test_a_resume_root_without_a_complete_checkpoint_is_refused(tmp_path, shards, capsys):
    root = tmp_path / "other" / "checkpoints"
    root.mkdir(parents=True)
    (root / "latest").write_text("step_00000008")      # names a checkpoint that was never completed
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, shards, f"run.resume={root}"), run_dir, "run.resume", capsys, str(root))


def test_a_missing_init_from_is_refused(tmp_path, shards, capsys):
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, shards, f"run.init_from={tmp_path / 'pretrain'}"), run_dir, "run.init_from",
                   capsys, str(tmp_path / "pretrain"))


def test_an_init_from_checkpoint_without_model_state_is_refused(tmp_path, shards, capsys):
    checkpoint(tmp_path / "pretrain", model=False)
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, shards, f"run.init_from={tmp_path / 'pretrain'}"), run_dir, "run.init_from",
                   capsys, "model.pt")


def test_a_resume_on_other_shards_is_refused_naming_data_urls(tmp_path, shards, capsys):
    args = job_args(tmp_path / "run", shards)
    trained_on = data_source(load_config(JobConfig, args[1], args[2:]).data)
    step = checkpoint(tmp_path / "pretrain", meta={"data_source": trained_on})
    one_shard = shards.replace("{000000..000001}", "000000")
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, one_shard, f"run.resume={step}"), run_dir, "data.urls", capsys, str(step))
    # run.resume=auto: the checkpoint the run dir's `latest` names
    checkpoint(run_dir, meta={"data_source": trained_on})
    assert main(job_args(run_dir, one_shard)) == 2 and "config error: data.urls" in capsys.readouterr().err
    # another world size (not known here), number of workers or batch size per rank: an elastic resume
    validate_job(load_config(JobConfig, args[1], [*args[2:], "data.num_workers=2", "data.batch_size=4"]))


def test_existing_checkpoints_are_accepted_for_resume_and_init_from(tmp_path, shards):
    step = checkpoint(tmp_path / "pretrain")
    for resume in ("auto", "", str(step), str(step.parent)):
        for init_from in (str(tmp_path / "pretrain"), str(step.parent), str(step), str(step / "model.pt")):
            args = job_args(tmp_path / "run", shards, f"run.resume={resume}", f"run.init_from={init_from}")
            validate_job(load_config(JobConfig, args[1], args[2:]))


# ---------------------------------------------------------------------------------------------- eval / keep_best
@pytest.mark.parametrize("overrides, key", [
    (["run.keep_best=eval/accuracy_cross_mean"], "run.keep_best"),                 # the probe is off
    (["eval.every=2", "eval.urls={shards}", "run.keep_best=loss"], "run.keep_best"),  # not a probe metric
    (["eval.every=2"], "eval.urls"),                                                # no validation shards
    (["eval.every=2", "eval.urls=/nonexistent/val-{{000000..000001}}.tar"], "eval.urls"),
    (["eval.every=2", "eval.urls={shards}", "eval.kind=features"], "eval.kind"),   # the job trains on clips
    (["eval.every=-1"], "eval"),
])
def test_probe_and_keep_best_errors_are_refused_naming_the_key(tmp_path, shards, capsys, overrides, key):
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, shards, *(o.format(shards=shards) for o in overrides)), run_dir, key, capsys)


def test_a_probe_on_labelled_shards_ranking_checkpoints_is_accepted(tmp_path, shards):
    args = job_args(tmp_path / "run", shards, "eval.every=2", f"eval.urls={shards}",
                    "run.keep_best=eval/accuracy_video_to_audio")
    validate_job(load_config(JobConfig, args[1], args[2:]))


# ---------------------------------------------------------------------------------------------- value ranges
@pytest.mark.parametrize("override, key", [
    ("data.decode.seconds=0", "decode.seconds"),
    ("data.decode.frame_size=-32", "decode.frame_size"),
    ("data.decode.frames_per_segment=0", "decode.frames_per_segment"),
    ("data.decode.sample_rate=0", "decode.sample_rate"),
    ("data.decode.audio_shortfall_s=-0.1", "decode.audio_shortfall_s"),
    ("data.decode.audio_shortfall_s=4", "decode.audio_shortfall_s"),      # the whole clip (decode.seconds=4)
    ("data.batch_size=1", "data.batch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]"),
    ("optim.betas=[-0.1,0.999]", "optim.betas[0]"),
    ("optim.weight_decay=-0.01", "optim.weight_decay"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
    ("optim.grad_clip=-1", "optim.grad_clip"),
])
def test_out_of_range_values_are_refused_naming_the_key(tmp_path, shards, capsys, override, key):
    run_dir = tmp_path / "run"
    assert_refused(job_args(run_dir, shards, override), run_dir, key, capsys)


def test_lr_zero_stays_allowed(tmp_path, shards):
    """A phase that must keep its weights trains at lr 0 (tests/system/test_slurm_jobs.py)."""
    args = job_args(tmp_path / "run", shards, "optim.lr=0.0")
    validate_job(load_config(JobConfig, args[1], args[2:]))


def test_batch_of_one_is_refused_exactly_when_a_term_takes_negatives_from_the_batch():
    def job(task: str, batch: int, **model) -> JobConfig:
        return JobConfig(task=task, data=DataConfig(urls="x.tar", batch_size=batch), model=model)

    assert job("unicode", 1).model.in_batch_negative_terms() == ["CLUB", "Cross-CPC", "CMCM"]
    assert job("unicode", 1, use_club=False, use_cmcm=False).model.in_batch_negative_terms() == ["Cross-CPC"]
    assert job("comet", 1).model.in_batch_negative_terms() == ["CLUB", "Cross-CPC", "CMCM"]
    fccid = job("fccid", 1, a_club=False, v_club=False, av_club=False, te_club=False)
    assert fccid.model.in_batch_negative_terms() == ["InfoNCE", "Cross-CPC", "CMCM"]   # InfoNCE is never off
    for cfg in (job("unicode", 1), job("comet", 1), job("fccid", 1), fccid):
        with pytest.raises(ConfigError, match=r"^data\.batch_size=1: task"):
            check_batch_size(cfg)
    # the baseline variant (reconstruction + VQ) has no term across clips: one clip per rank is enough
    check_batch_size(job("unicode", 1, variant="baseline"))
    check_batch_size(job("unicode", 1, use_club=False, use_cpc=False, use_cmcm=False))
    check_batch_size(job("fccid", 2))


# ---------------------------------------------------------------------------------------------- the continual launcher
def test_continual_launcher_checks_each_phase_as_the_job_would(tmp_path, capsys):
    phases = write_phases(tmp_path / "phases.yaml", [{"name": "a", "overrides": ["data.batch_size=1"]}],
                          script="slurm/pretrain_av.sh", run_root=str(tmp_path / "runs"))
    assert continual_main([str(phases), "--dry-run"]) == 2
    assert "phase 'a': data.batch_size=1" in capsys.readouterr().err
    phases = write_phases(tmp_path / "phases.yaml", [{"name": "a", "init_from": str(tmp_path / "nowhere")}],
                          script="slurm/pretrain_av.sh", run_root=str(tmp_path / "runs"))
    assert continual_main([str(phases), "--dry-run"]) == 2
    assert "phase 'a': run.init_from=" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_continual_launcher_leaves_chained_init_from_and_shards_to_the_phase_jobs(tmp_path, capsys):
    """Phase b starts from phase a's checkpoints, which exist only once a has run; the shards are read (and
    checked) by each phase's job on the compute nodes, and may be staged after submission."""
    step = checkpoint(tmp_path / "pretrain")
    phases = write_phases(
        tmp_path / "phases.yaml",
        [{"name": "a", "init_from": str(step),
          "overrides": [f"data.urls={tmp_path}/staged-later/train-{{000000..000003}}.tar"]},
         {"name": "b"}],
        script="slurm/pretrain_av.sh", run_root=str(tmp_path / "runs"))
    assert continual_main([str(phases), "--dry-run"]) == 0, capsys.readouterr().err
    assert f"run.init_from={tmp_path / 'runs' / 'a' / 'checkpoints'}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- trainer.programs.supervisor
def launcher_argv(run_dir: Path, shards: str, *overrides: str) -> list[str]:
    """``python -m trainer.programs.supervisor``'s arguments for 2 processes (accelerate launch options, then the
    job)."""
    command = job_command(run_dir, shards, processes=2, overrides=list(overrides))
    assert command[1:3] == ["-m", "trainer.programs.supervisor"]
    return command[3:]


def test_the_launcher_refuses_a_bad_config_before_starting_any_process(tmp_path, shards, capsys):
    """Exit 2 naming the key, with no run directory and no `accelerate launch` (which would print a torch elastic
    traceback and exit 1 after starting every rank)."""
    from trainer.programs.supervisor import launch

    run_dir = tmp_path / "run"
    assert launch(launcher_argv(run_dir, shards, "data.decode.seconds=0")) == 2
    err = capsys.readouterr().err
    assert "config error: " in err and "data.decode.seconds" in err, err
    assert not run_dir.exists()


def test_the_launcher_runs_the_main_job_only(tmp_path, shards, capsys):
    from trainer.programs.supervisor import launch

    argv = launcher_argv(tmp_path / "run", shards)
    script = next(i for i, a in enumerate(argv) if a.endswith("trainer/main.py"))
    other = tmp_path / "other.py"
    other.write_text("")
    argv[script] = str(other)
    assert launch(argv) == 2
    assert "the training script must be" in capsys.readouterr().err


THREE_MISTAKES = """
run:
  max_step: 10          # unknown key (max_steps)
optim:
  lr: fast              # wrong type
data:
  decode:
    seconds: 0          # out of range (DecodeConfig.__post_init__)
"""

CHECK_SCRIPT = """
import sys, time
start = time.perf_counter()
from trainer.programs.supervisor import launch
code = launch(sys.argv[1:])
print(code, round(time.perf_counter() - start, 3), sorted(m for m in ("torch", "webdataset", "accelerate")
                                                             if m in sys.modules))
"""


def test_a_config_with_three_mistakes_lists_all_three_at_once_without_torch(tmp_path):
    """``python -m trainer.programs.supervisor --check`` (what slurm/submit.sh runs before it queues a job) on a
    config with an unknown key, a value of the wrong type and one out of range: exit 2 naming all three with their
    file, the unknown key with the close one, before anything imports torch (which alone takes longer than the 2 s
    allowed)."""
    import subprocess
    import sys

    from job_utils import REPO

    config = tmp_path / "bad.yaml"
    config.write_text(THREE_MISTAKES)
    argv = ["--check", "--config_file", "launch/accelerate/cpu_zero2.yaml", "trainer/main.py", "--config", str(config)]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    elapsed = time.perf_counter() - start
    code, _, imported = proc.stdout.strip().split(" ", 2)
    assert code == "2" and imported == "[]", (proc.stdout, proc.stderr)
    err = proc.stderr
    assert "3 config errors" in err, err
    assert f"unknown config key 'run.max_step' (from {config}): did you mean 'max_steps'?" in err
    assert f"config key 'optim.lr' (from {config}): expected a number, got 'fast'" in err
    assert f"config section 'data.decode' (from {config}): decode.seconds must be >= 1, got 0" in err
    assert elapsed < 2.0, elapsed


def test_errors_of_the_file_and_of_each_override_are_listed_with_their_source(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(JobConfig, config, ["run.max_steps=0", "tracking.experimnt=x", "model.quantizer.num_codes=1"])
    errors = caught.value.errors
    assert len(errors) == 4, errors
    assert errors[0].startswith(f"config section 'optim' (from {config}): optim.lr must be")
    assert "(from override 'run.max_steps=0'): run.max_steps must be >= 1" in errors[1]
    assert "unknown config key 'tracking.experimnt' (from override 'tracking.experimnt=x'): did you mean " \
           "'experiment'?" in errors[2]
    assert "(from override 'model.quantizer.num_codes=1')" in errors[3]


def test_relative_paths_of_a_config_file_are_read_from_the_repository_root(tmp_path, monkeypatch):
    """A config file's relative paths (and the defaults') name paths under the repository root, an override's are read
    from the current directory, absolute paths and pipe: commands are kept (trainer/configs/load.py, "Relative
    paths")."""
    from job_utils import REPO

    config = tmp_path / "c.yaml"
    config.write_text("run:\n  dir: runs/x\ndata:\n  urls: data/a-{0..1}.tar::pipe:cat b.tar::/abs/c.tar\n")
    monkeypatch.chdir(REPO)
    at_root = load_config(JobConfig, config)
    assert (at_root.run.dir, at_root.backbones) == ("runs/x", "launch/configs/backbones/tiny.yaml")  # as written
    monkeypatch.chdir(tmp_path)
    elsewhere = load_config(JobConfig, config, ["run.init_from=ckpt/step_4"])
    assert elsewhere.run.dir == str(Path(REPO) / "runs/x")
    assert elsewhere.backbones == str(Path(REPO) / "launch/configs/backbones/tiny.yaml")
    assert elsewhere.data.urls == f"{Path(REPO) / 'data/a-{0..1}.tar'}::pipe:cat b.tar::/abs/c.tar"
    assert elsewhere.run.init_from == "ckpt/step_4"      # an override: from the current directory, as given
    assert elsewhere.run.resume == "auto"                # a word, not a path


VALID_CHECK_SCRIPT = """
import sys
from trainer.main import load_job, parse_args
load_job(parse_args(sys.argv[1:]))
print(sorted(m for m in ("torch", "webdataset", "accelerate", "mlflow", "transformers") if m in sys.modules))
"""


def test_a_valid_job_is_checked_without_the_training_stack(tmp_path, shards):
    """Every check of a valid job (its config, the shard manifest, the backbones file, the checkpoint a resume
    takes and its data, an init_from checkpoint) imports no torch: the supervisor, alive for the whole job, runs
    them (trainer/programs/supervisor.py)."""
    import subprocess
    import sys

    from job_utils import REPO

    run_dir = tmp_path / "run"
    checkpoint(run_dir)
    source = checkpoint(tmp_path / "other")
    args = job_args(run_dir, shards, f"run.init_from={source}")
    proc = subprocess.run([sys.executable, "-c", VALID_CHECK_SCRIPT, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)
