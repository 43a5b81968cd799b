#!/bin/bash
# sbatch with the job checked first, here on the login node: a bad config, a missing manifest or backbones file, or a
# checkpoint RUN_DIR cannot resume, fails now with exit status 2 and the key named, and nothing is queued.
#   slurm/submit.sh [sbatch options] SCRIPT [key=value ...]
#   slurm/submit.sh slurm/pretrain_av.sh run.max_steps=5000
#   CONFIG=launch/configs/demo.yaml RUN_DIR=runs/demo-slurm slurm/submit.sh --time=1:00:00 slurm/pretrain_av.sh
#   slurm/submit.sh --partition=gpu --gpus-per-node=8 --cpus-per-task=64 slurm/pretrain_av.sh
# The arguments are sbatch's: options, the batch script (the first argument naming a .sh file), then its
# arguments, the job's key=value overrides. What this adds to `sbatch`:
#   - the check: `bash SCRIPT --check key=value ...` (slurm/job_body.sh; the job's own start-up validation, run
#     with the same CONFIG, EXTRA, overrides and RUN_DIR as the job will have);
#   - RUN_DIR, when not set: runs/<job name>-<date>-<time>, created now and exported to the job, so a requeued job
#     keeps it (plain sbatch makes it runs/<job name>-<job id> when the job starts);
#   - the job's log in RUN_DIR (--output=$RUN_DIR/slurm-%j.out), unless the options give -o/--output.
# Exit status: sbatch's (0 submitted), or 2 when the check (or finding the project's Python: slurm/env.sh) failed.
set -euo pipefail

cmg_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
options=()
script=""
job_name=""
has_output=0
while (( $# )); do
    arg="$1"
    shift
    if [[ "$arg" == *.sh && -f "$arg" ]]; then
        script="$(realpath "$arg")"
        break
    fi
    options+=("$arg")
    case "$arg" in
        --job-name=*) job_name="${arg#--job-name=}" ;;
        -J?*) job_name="${arg#-J}" ;;
        --job-name | -J) job_name="${1:-}" ;;
        --output* | -o*) has_output=1 ;;
    esac
done
if [[ -z "$script" ]]; then
    echo "usage: slurm/submit.sh [sbatch options] SCRIPT [key=value ...]   (SCRIPT: a batch script, e.g." \
         "slurm/pretrain_av.sh)" >&2
    exit 2
fi
if [[ -z "$job_name" ]]; then   # the script's own #SBATCH --job-name, else sbatch's default (the script's name)
    job_name="$(sed -n 's/^#SBATCH[[:space:]]\+--job-name=\([^[:space:]]*\).*/\1/p' "$script" | head -n1)"
    job_name="${job_name:-$(basename "$script")}"
fi

cd "$cmg_repo"   # where the job runs: relative paths in CONFIG, RUN_DIR and the overrides start here
RUN_DIR="$(realpath -m "${RUN_DIR:-runs/${job_name}-$(date +%Y%m%d-%H%M%S)}")"
export RUN_DIR

echo "[submit] checking the job (${CONFIG:-the config named in the script}, run dir $RUN_DIR) before anything is queued"
if ! bash "$script" --check "$@"; then
    echo "[submit] not submitted: the job would fail when it starts (fix the above and run this again)" >&2
    exit 2
fi

mkdir -p "$RUN_DIR"
(( has_output )) || options+=("--output=$RUN_DIR/slurm-%j.out")
job="$(sbatch --parsable "${options[@]}" "$script" "$@")"
job="${job%%;*}"   # --parsable prints "id" or "id;cluster"
log="$RUN_DIR/slurm-$job.out"
(( has_output )) && log="the --output you gave"
echo "[submit] job $job: run dir $RUN_DIR, log $log"
echo "$job"
