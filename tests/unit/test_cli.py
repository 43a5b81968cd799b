"""The ``cmg`` command (trainer/programs/cmg.py): every command's ``--help`` runs without importing torch and lists
its options with their defaults, ``train``'s every config key; the parsers' defaults are the configs' own (the
torch-free config modules: trainer/configs/, shards/config.py, trainer/programs/config.py,
trainer/programs/bench/config.py, which the
programs import too); commands reach their programs. How fast the help answers is a measurement (README), not a test:
here it is only checked that torch stays out, which is what makes it fast."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from job_utils import REPO

from trainer.programs.cmg import COMMANDS, main

HELPS = [["train"], ["launch"], ["eval"], ["encode"], ["continual"], *(["shards", n] for n in COMMANDS["shards"]),
         ["shards", "convert", "ave"], *(["bench", n] for n in COMMANDS["bench"])]


HELP_SCRIPT = """
import contextlib, io, sys
from trainer.programs.cmg import main
for args in HELPS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--help"])
    assert code == 0 and "usage:" in out.getvalue(), (args, code, out.getvalue())
print(sorted(m for m in ("torch", "transformers", "webdataset", "mlflow", "decord") if m in sys.modules))
"""


def test_every_help_runs_without_importing_torch():
    script = f"HELPS = {[[], ['shards'], ['bench'], *HELPS]}\n{HELP_SCRIPT}"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args", HELPS, ids=" ".join)
def test_help_lists_every_option_with_its_default(args, capsys):
    assert main([*args, "--help"]) == 0
    text = capsys.readouterr().out
    # continual parses in its own (torch-free) module, and a sub-parser keeps the program's name
    own_name = args[0] == "continual" or args[-1] == "ave"
    assert text.startswith("usage: " if own_name else f"usage: cmg {' '.join(args)}")
    if args[0] == "encode":
        assert "clips per backbone and model batch (default: 16)" in text


def _keys(cfg, prefix=""):
    """Every dotted key of the config ``cfg``, nested sections flattened."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        yield from _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]


# the ways to pick the task whose model section the help shows: the default, an override, a job file's task
HELP_TASKS = [([], "unicode"), (["task=fccid"], "fccid"),
              (["--config", str(REPO / "launch" / "configs" / "comet_demo_vt.yaml")], "comet")]


@pytest.mark.parametrize("args, task", HELP_TASKS, ids=lambda v: v if isinstance(v, str) else None)
def test_train_help_lists_every_config_key_with_its_default_and_doc_and_one_task(capsys, args, task):
    from trainer.configs.job import JobConfig
    from trainer.configs.model import TASK_CONFIGS

    assert main(["train", *args, "--help"]) == 0
    text = capsys.readouterr().out
    for line in ("run.max_steps=1000", "data.decode.seconds=10", "backbones=launch/configs/backbones/tiny.yaml",
                 "model.quantizer.num_codes=400", "optim.lr=0.0004", "tracking.experiment=cmg-trainer"):
        assert f"  {line}" in text, line
    assert "optimizer steps of the whole run (a resumed run continues to it)" in text
    assert "spatial_patches are *derived* from the data source" in text   # the job's own docstring
    # the model section once, the chosen task's, with every key of its config; the others are named, not listed
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("model (")] == [f"model (task={task}"]
    model_keys = [key for key in _keys(TASK_CONFIGS[task](), "model.")]
    for key in [*(k for k in _keys(JobConfig()) if not k.startswith("model.")), *model_keys]:
        assert f"\n  {key}=" in text, key
    assert sum(line.startswith("  model.") for line in text.splitlines()) == len(model_keys)
    others = [name for name in TASK_CONFIGS if name != task]
    assert f"cmg train task=NAME --help, NAME one of {', '.join(others)}" in " ".join(text.split())
    extra = {"fccid": "model.coarse.temperature=0.1", "comet": "model.club.nonnegative=true"}
    for name, line in extra.items():
        assert (f"  {line}" in text) == (name == task), line


def _enumerated_keys(cls, prefix=""):
    """(dotted key, allowed values) of every key of ``cls`` whose values are a fixed set: a ``Literal`` annotation
    (alone, in ``X | None`` or as a list's items) or a set named in its field's ``metadata["choices"]``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from _enumerated_keys(tp, key + ".")
        elif "choices" in f.metadata:
            yield key, tuple(f.metadata["choices"])
        else:
            for literal in (tp, *typing.get_args(tp)):
                if typing.get_origin(literal) is typing.Literal:
                    yield key, typing.get_args(literal)


def _entry(text: str, key: str) -> str:
    """The help's entry of ``key``: its ``  key=default`` line and the doc lines under it, whitespace collapsed."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}="))
    rest = itertools.takewhile(lambda line: line.startswith(" " * 47), lines[first + 1:])
    return " ".join(" ".join([lines[first], *rest]).split())


@pytest.mark.parametrize("task", ["unicode", "fccid", "comet"])
def test_train_help_shows_the_choices_of_every_enumerated_key(capsys, task):
    """Every key of the job config and of the task's model section whose values are a fixed set (found here from the
    config classes, so a new one is checked too) shows them: ``{a, b}`` after its default."""
    from trainer.configs.job import JobConfig
    from trainer.configs.model import TASK_CONFIGS

    assert main(["train", f"task={task}", "--help"]) == 0
    text = capsys.readouterr().out
    keys = [*_enumerated_keys(JobConfig), *_enumerated_keys(TASK_CONFIGS[task], "model.")]
    assert {"task", "data.kind", "optim.schedule", "model.negatives", "model.quantizer.ema_mode"} <= dict(keys).keys()
    assert task != "unicode" or {"model.variant", "model.encoder.positional"} <= dict(keys).keys()
    for key, values in keys:
        shown = "{" + ", ".join("''" if v == "" else str(v) for v in values) + "}"
        assert shown in _entry(text, key), (key, _entry(text, key))


def test_train_help_refuses_an_unknown_task_or_config(capsys, tmp_path):
    assert main(["train", "task=fcid", "--help"]) == 2
    assert "unknown task 'fcid' (config key 'task'); did you mean 'fccid'?" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--help"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_config_reference_is_the_job_configs_defaults():
    """``cmg train --help`` lists the imported (torch-free) dataclasses: every key with its default, the model
    section of one task, and a field's comment as its doc."""
    from trainer.programs.cmg import config_reference, field_docs
    from trainer.configs.job import JobConfig, RunConfig
    from trainer.configs.model import TASK_CONFIGS

    for task, config in TASK_CONFIGS.items():
        text = config_reference(task)
        for key in [*(k for k in _keys(JobConfig()) if not k.startswith("model.")), *_keys(config(), "model.")]:
            assert f"  {key}=" in text, (task, key)
        assert text.count("model.quantizer.num_codes=400") == 1
    assert config_reference() == config_reference("unicode")   # the job's default task
    assert "model.feature_dims={audio: 128, image: 512, text: 768, video: 512}" in config_reference()   # not its code
    assert field_docs(RunConfig)["max_steps"] == "optimizer steps of the whole run (a resumed run continues to it)"
    assert field_docs(RunConfig)["keep_best"].startswith("a probe metric (eval.every;")     # the lines above it


def test_parser_defaults_are_the_programs_configs():
    """The parsers built without torch take their defaults and choices from the configs the programs run with."""
    from shards.parsers import extract_parser, synth_parser
    from shards.config import SynthConfig
    from trainer.programs.cmg import evaluate_parser
    from trainer.configs.data import DecodeConfig
    from trainer.configs.eval import PRETRAIN_SETS, ProbeConfig, SourceConfig, TOCConfig
    from trainer.programs.bench import parsers as bench
    from trainer.programs.bench import continual_features, core, e2e, fidelity, synthetic_features
    from trainer.programs.bench.config import ContinualConfig, PretrainConfig
    from trainer.programs.config import DemoConfig

    synth = synth_parser().parse_args(["--out", "x"])
    assert (synth.num_clips, synth.classes, synth.seconds, synth.fps, synth.size, synth.sr) == tuple(
        getattr(SynthConfig(), k) for k in ("num_clips", "classes", "seconds", "fps", "size", "sample_rate"))
    extract = extract_parser().parse_args(["--src", "a", "--backbones", "b", "--out", "c"])
    assert (extract.seconds, extract.frames_per_segment) == (DecodeConfig().seconds, DecodeConfig().frames_per_segment)
    evaluate = evaluate_parser().parse_args(["run"])
    assert (evaluate.split, evaluate.split_seed) == (SourceConfig().split, SourceConfig().split_seed)
    assert evaluate.toc_lambda == TOCConfig().balance and evaluate.pretrain_set in PRETRAIN_SETS
    assert bench.continual_features_parser().parse_args([]).new_codes == ContinualConfig().new_codes
    assert bench.continual_features_parser().parse_args([]).probe_epochs == ProbeConfig().epochs
    assert bench.fidelity_parser().parse_args([]).steps == PretrainConfig().steps
    assert bench.e2e_parser().parse_args([]).classes == DemoConfig().pretrain.classes
    assert bench.core_parser().parse_args([]).configs.split(",") == list(core.CORE_CONFIGS)
    # the programs read the very objects the parsers list
    assert continual_features.METHODS is bench.METHODS and fidelity.ROWS is bench.ROWS
    assert e2e.E2E_ROWS is bench.E2E_ROWS
    assert synthetic_features.WORLDS is bench.WORLDS


def test_a_field_doc_is_its_trailing_comment_else_the_comments_above(tmp_path, monkeypatch):
    from trainer.programs.cmg import field_docs

    (tmp_path / "docmod.py").write_text(
        "from dataclasses import dataclass, field\n\n\n"
        "@dataclass\nclass Inner:\n    k: int = 1 << 3   # shifted\n\n\n"
        "@dataclass\nclass Outer(Inner):\n    # first line\n    # second line\n    size: int = 3\n"
        "    plain: int = 4\n    inner: Inner = field(default_factory=lambda: Inner(k=5))  # a section\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import docmod

    assert field_docs(docmod.Outer) == {"k": "shifted", "size": "first line second line", "plain": "",
                                        "inner": "a section"}


def test_commands_run_their_programs_and_bad_commands_exit_2(tmp_path, capsys):
    assert main([]) == 2
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    assert main(["shards", "nope"]) == 2
    assert main(["shards", "synth", "--out", str(tmp_path / "clips"), "--num-clips", "1", "--seconds", "1",
                 "--size", "16"]) == 0
    assert (tmp_path / "clips").is_dir() and len(list((tmp_path / "clips").glob("*.mp4"))) == 1
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_python_dash_m_trainer_and_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 0 and "encode" in proc.stdout
    cmg = Path(sys.executable).with_name("cmg")   # pyproject [project.scripts], installed by `make install`
    proc = subprocess.run([str(cmg), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "synth | write | inspect | convert | extract" in proc.stdout


def test_every_command_names_a_program_that_exists():
    from trainer.help_text import module_file

    for command in [c for c in COMMANDS.values() if not isinstance(c, dict)] + \
            [c for group in COMMANDS.values() if isinstance(group, dict) for c in group.values()]:
        assert module_file(command.module).is_file()
        assert dataclasses.is_dataclass(command)
