#!/bin/bash
# Submit continual phases as a chain of Slurm jobs (one per phase, afterok-chained; see trainer/programs/continual.py).
#   slurm/continual.sh launch/configs/continual_vt_at_it.yaml [--dry-run]
#   slurm/continual.sh --help        # the phases file's keys and the exit codes (127: no sbatch on PATH, found
#                                    # before anything is checked or created)
# Paths inside the phases file start at the repository root; the phases file itself at the current directory.
# The Python is found as for every script here (slurm/env.sh: PYTHON, the active virtualenv, the repository's
# .venv, python3 on PATH), so no environment needs activating.
set -euo pipefail
cmg_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$cmg_repo/slurm/env.sh"
export PYTHONPATH="$cmg_repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$CMG_PYTHON" -m trainer.programs.continual "$@"
