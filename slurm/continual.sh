#!/bin/bash
# Submit continual phases as a chain of Slurm jobs (one per phase, afterok-chained; see trainer/programs/continual.py).
#   slurm/continual.sh launch/configs/continual_vt_at_it.yaml [--dry-run]
# Paths inside the phases file start at the repository root; the phases file itself at the current directory.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m trainer.programs.continual "$@"
