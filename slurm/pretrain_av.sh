#!/bin/bash
# Uni-Code audio-visual pretraining (seed 000 §B.1 hyper-parameters: launch/configs/pretrain_av.yaml).
#   slurm/submit.sh slurm/pretrain_av.sh                         # checks the job here, then sbatch; log in RUN_DIR
#   RUN_DIR=runs/av1 EXTRA="run.max_steps=5000" slurm/submit.sh --nodes=2 slurm/pretrain_av.sh optim.lr=2e-4
#   sbatch slurm/pretrain_av.sh                                  # also works (checked only when it starts)
#   bash slurm/pretrain_av.sh --check [key=value ...]            # just the check (exit 0, or 2 naming the problem)
# The headers ask for what any partition has, so the script runs as written on a CPU-only cluster: one node, one
# task, 2 CPUs (2 training processes over gloo). Site options and GPUs go on the command line, which overrides every
# #SBATCH line; with GPUs the job starts one process per allocated GPU:
#   slurm/submit.sh --partition=gpu --gpus-per-node=8 --cpus-per-task=64 slurm/pretrain_av.sh
# The environment variables the job reads (CONFIG, RUN_DIR, MLFLOW_TRACKING_URI, EXTRA, ACCELERATE_CONFIG,
# NPROC_PER_NODE, PYTHON, ...) are documented in slurm/job_body.sh. Without slurm/submit.sh, the log goes to
# <job name>-<job id>.out in the submit directory unless you give --output.
#SBATCH --job-name=cmg-pretrain-av
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

: "${CONFIG:=launch/configs/pretrain_av.yaml}"
source "${CMG_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/job_body.sh"
