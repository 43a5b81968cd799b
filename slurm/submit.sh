#!/bin/bash
# usage: slurm/submit.sh [sbatch options] SCRIPT [key=value ...]
#        slurm/submit.sh -h | --help                  (this text)
#
# sbatch with the job checked first, here on the login node: a bad config, a missing manifest or backbones file, or
# a checkpoint in RUN_DIR that cannot be resumed fails now with exit status 2 and the key named, and nothing is queued.
#   slurm/submit.sh slurm/pretrain_av.sh run.max_steps=5000
#   CONFIG=launch/configs/demo.yaml RUN_DIR=runs/demo-slurm slurm/submit.sh --time=1:00:00 slurm/pretrain_av.sh
#   slurm/submit.sh --partition=gpu --gpus-per-node=8 --cpus-per-task=64 slurm/pretrain_av.sh
#
# Arguments: sbatch's. Its options, the batch script SCRIPT (the first argument naming an existing .sh file:
# slurm/pretrain_av.sh, slurm/pretrain_avt.sh), then SCRIPT's arguments: the job's key=value config overrides.
# Relative paths (in CONFIG, RUN_DIR and the overrides) start at the repository root, where the job runs.
#
# What it does, in this order:
#   1. looks for sbatch on PATH; without it, stops at once (exit 127): nothing is checked, nothing is created;
#   2. checks the job: `bash SCRIPT --check key=value ...` (slurm/job_body.sh: the job's own start-up validation,
#      with the CONFIG, EXTRA, overrides and RUN_DIR the job will have; it starts the project's Python);
#   3. creates RUN_DIR and submits SCRIPT with sbatch from the repository root, the job's log in RUN_DIR
#      (--output=$RUN_DIR/slurm-%j.out) unless the options give -o/--output; prints the job id last.
#   RUN_DIR exists only once a job is queued: no step before sbatch creates it, and when sbatch refuses the job the
#   directories this made for it are removed again (a RUN_DIR that existed before is left as it was).
#
# Environment (sbatch exports it to the job, which reads the same variables):
#   CONFIG        the job YAML (default: the one SCRIPT names, e.g. launch/configs/pretrain_av.yaml)
#   RUN_DIR       the run directory (default: runs/<job name>-<date>-<time>); passed to the job, so a requeued job
#                 keeps it; an existing one is resumed from (the check reads its checkpoints)
#   EXTRA         more key=value overrides, separated by whitespace
#   PYTHON        the project's Python for the check and the job (default: the active virtualenv, else the
#                 repository's .venv, else python3 on PATH: slurm/env.sh)
#   ACCELERATE_CONFIG, MLFLOW_TRACKING_URI, NPROC_PER_NODE, MAIN_PROCESS_PORT, CMG_REPO: read by the job
#                 (slurm/job_body.sh documents every one); SLURM_CONF and SBATCH_*: read by sbatch
#
# Exit status:
#   0      submitted (the last line printed is the job id)
#   2      the check failed, no Python with the project's packages was found (slurm/env.sh), or no SCRIPT was given
#   127    no sbatch on PATH: the shell's own status for a command not found, kept apart from 2 because the job
#          itself may be fine; this host cannot submit (use a login node of the cluster, or load its Slurm module)
#   other  sbatch's own, when it refused the job (e.g. an unknown --partition)
set -euo pipefail

usage() {   # the comment block above, without its '#'
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

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
        -h | --help) usage; exit 0 ;;
        --job-name=*) job_name="${arg#--job-name=}" ;;
        -J?*) job_name="${arg#-J}" ;;
        --job-name | -J) job_name="${1:-}" ;;
        --output* | -o*) has_output=1 ;;
    esac
done
if ! command -v sbatch > /dev/null; then
    echo "slurm/submit.sh: no sbatch on PATH ($PATH): this host cannot submit Slurm jobs; run this where Slurm's" \
         "commands are (a login node of the cluster, or after loading its Slurm module). Nothing was checked or" \
         "created (exit 127; slurm/submit.sh --help)" >&2
    exit 127
fi
if [[ -z "$script" ]]; then
    echo "usage: slurm/submit.sh [sbatch options] SCRIPT [key=value ...]   (SCRIPT: a batch script, e.g." \
         "slurm/pretrain_av.sh; slurm/submit.sh --help says more)" >&2
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

# RUN_DIR must exist before sbatch: the job's log goes there, and Slurm opens it before the job starts. `made` is the
# topmost directory created here; unless a job is queued, the exit trap removes what is still empty of it.
made=""
if [[ ! -e "$RUN_DIR" ]]; then
    made="$RUN_DIR"
    while [[ ! -e "$(dirname "$made")" ]]; do made="$(dirname "$made")"; done
fi
remove_made_run_dir() {
    [[ -n "$made" ]] || return 0
    local dir="$RUN_DIR"
    while rmdir "$dir" 2> /dev/null && [[ "$dir" != "$made" ]]; do dir="$(dirname "$dir")"; done
}
trap remove_made_run_dir EXIT
mkdir -p "$RUN_DIR"
(( has_output )) || options+=("--output=$RUN_DIR/slurm-%j.out")
job="$(sbatch --parsable "${options[@]}" "$script" "$@")"   # a refusal exits here with sbatch's status
made=""   # queued: RUN_DIR is the job's now
job="${job%%;*}"   # --parsable prints "id" or "id;cluster"
log="$RUN_DIR/slurm-$job.out"
(( has_output )) && log="the --output you gave"
echo "[submit] job $job: run dir $RUN_DIR, log $log"
echo "$job"
