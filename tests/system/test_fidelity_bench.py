"""The fidelity bench's rows end to end at toy sizes (trainer.programs.bench.fidelity.run_rows): pretrained through
the main job's loop on in-memory features, then probed."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from trainer.programs.bench.fidelity import FidelityConfig, run_rows
from trainer.programs.bench.config import PretrainConfig
from trainer.configs.eval import ProbeConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fccid_row_and_its_toc_row_share_one_pretraining(tmp_path):
    """run_rows end to end at toy sizes: one FCCID pretraining through the main job's loop (a checkpoint in the
    run directory, read back as trainer.programs.evaluate reads it), probed on all code dims and on TOC's Q."""
    cfg = FidelityConfig(pretrain_clips=96, downstream_clips=80, pretrain=PretrainConfig(steps=3, batch_size=32),
                         probe=ProbeConfig(epochs=1))
    plain, toc = run_rows(["fccid", "fccid_toc"], cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "step_00000003" / "model.pt").is_file()
    assert (plain["row"], toc["row"]) == ("fccid", "fccid_toc")
    assert plain["toc_dims"] is None and len(toc["toc_dims"]) == 32 and len(set(toc["toc_dims"])) == 32
    for key in ("same_code", "nuisance_r2", "codebook", "pretrain_s"):
        assert plain[key] == toc[key], key                          # one model: TOC changes only what heads read
    assert set(plain["results"]) == {f"{t}/{d}" for t in ("classification", "localisation") for d in ("V→A", "A→V")}
    assert "codebook/codes_used_text" in plain["codebook"]          # the quantizer saw audio, video and text
    with pytest.raises(ValueError, match="do not read one pretraining"):
        run_rows(["fccid", "unicode_avt_toc"], cfg, tmp_path / "other")
