"""The GPU check's report (`make gpu-check`; docs/performance.md, "GPU check"): every test of tests/gpu adds its figures
to the session's ``gpu_report`` and the session writes them, with the GPU's name and the versions, to
``$CMG_GPU_REPORT`` (default ``gpu_report/``) as ``report.json`` and ``report.md``; the benchmarks write their own
JSON and markdown pages next to them. Nothing is written where no test ran (no CUDA: every test skips)."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def gpu_report_dir() -> Path:
    out = Path(os.environ.get("CMG_GPU_REPORT", "gpu_report")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def gpu_report(gpu_report_dir):
    """``{section: {figure: value}}``, written when the session ends."""
    sections: dict[str, dict] = {}
    yield sections
    report = {"device": torch.cuda.get_device_name(0), "device_count": torch.cuda.device_count(),
              "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
              "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "nccl": str(torch.cuda.nccl.version()),
                           **{name: version(name) for name in ("deepspeed", "accelerate", "transformers")}},
              "sections": sections}
    (gpu_report_dir / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    lines = ["# GPU check (make gpu-check)", "", f"Device: {report['device']} (compute capability "
             f"{report['capability']}, {report['device_count']} visible)", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    for name, figures in sections.items():
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in figures.items()] + [""]
    pages = sorted(gpu_report_dir.glob("bench_*.md"))
    lines += ["Benchmark pages: " + ", ".join(p.name for p in pages)] if pages else []
    (gpu_report_dir / "report.md").write_text("\n".join(lines) + "\n")
