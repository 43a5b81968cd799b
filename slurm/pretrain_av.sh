#!/bin/bash
# Uni-Code audio-visual pretraining (seed 000 §B.1 hyper-parameters: launch/configs/pretrain_av.yaml).
#   sbatch slurm/pretrain_av.sh                                  # from the repository root
#   RUN_DIR=runs/av1 EXTRA="run.max_steps=5000" sbatch --nodes=2 slurm/pretrain_av.sh optim.lr=2e-4
# Every #SBATCH line can be overridden on the sbatch command line; the environment variables the job
# reads (CONFIG, RUN_DIR, MLFLOW_TRACKING_URI, EXTRA, ACCELERATE_CONFIG, NPROC_PER_NODE, ...) are
# documented in slurm/job_body.sh. Site options (--partition, --account, --qos) go on the command line.
#SBATCH --job-name=cmg-pretrain-av
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

: "${CONFIG:=launch/configs/pretrain_av.yaml}"
source "${CMG_REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/job_body.sh"
