# Shared body of the Slurm batch scripts (slurm/pretrain_av.sh, slurm/pretrain_avt.sh): sourced by them
# after their #SBATCH headers and defaults; not a batch script itself.
#
# Every setting is an environment variable (sbatch exports the submitting environment), e.g.
#   CONFIG=launch/configs/pretrain_avt.yaml RUN_DIR=runs/avt1 slurm/submit.sh slurm/pretrain_avt.sh run.max_steps=5000
#   CONFIG=launch/configs/pretrain_avt.yaml RUN_DIR=runs/avt1 sbatch slurm/pretrain_avt.sh run.max_steps=5000
#
# `bash slurm/pretrain_av.sh --check [key=value ...]` (outside a job) checks the job as it would start, and starts
# nothing: the config and its overrides, the shards' manifest, the backbones file, RUN_DIR's checkpoints
# (`python -m trainer.programs.supervisor --check`, i.e. `cmg launch --check`); exit 0, or 2 naming the problem.
# slurm/submit.sh runs it before sbatch.
#
#   CONFIG             job YAML for trainer/main.py (default: the calling script's)
#   RUN_DIR            run directory (default runs/<job name>-<job id>; a requeued job keeps its id, so it
#                      resumes); it is the trainer's run.dir, whatever the overrides say
#   MLFLOW_TRACKING_URI  MLflow server/store (default: sqlite in RUN_DIR); read by the trainer
#   EXTRA              key=value overrides, separated by whitespace (no spaces inside a value: [a,b] not [a, b]);
#                      arguments after the script name on the sbatch line are overrides too (spaces allowed)
#   ACCELERATE_CONFIG  accelerate YAML (default: gpu_zero2.yaml on one GPU node, multinode_zero2.yaml on
#                      several, cpu_zero2.yaml without GPUs)
#   NPROC_PER_NODE     training processes per node (default: the node's allocated GPUs; without GPUs, one CPU
#                      process per allocated CPU, --cpus-per-task)
#   MAIN_PROCESS_PORT  rendezvous port on the first node (default 20000 + job id mod 20000)
#   CMG_REPO           repository root (default: the directory sbatch was called from, $SLURM_SUBMIT_DIR; the jobs
#                      run there, and relative paths start there)
#   PYTHON             the project's Python (default: the active virtualenv, else the repository's .venv, else
#                      python3 on PATH: slurm/env.sh, shared by every script here)
#
# Preemption: Slurm sends USR1 to this shell (--signal=B:USR1@120, or `scancel -b -s USR1 JOB`). The trap
# asks the trainer to stop ($RUN_DIR/STOP: it checkpoints and writes status.json state "stopped"); once srun
# has ended, the job requeues itself and the rerun resumes from the checkpoint (run.resume=auto) in the same
# MLflow run. A finished run exits 0; a crash exits non-zero and is never requeued.

set -euo pipefail

check_only=0
if [[ "${1:-}" == --check ]]; then
    check_only=1
    shift
elif [[ -z "${SLURM_JOB_ID:-}" ]]; then
    echo "slurm/job_body.sh: not inside a Slurm job; submit the script with slurm/submit.sh (checks the job first)" \
         "or sbatch, or check it here with --check" >&2
    exit 2
fi

# This file's repository: the one the batch script sourced it from (CMG_REPO, else the submit directory), or the
# script's own when run by hand with --check.
cmg_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$cmg_repo"
source slurm/env.sh
: "${CONFIG:?CONFIG (job YAML) is not set}"
if [[ ! -f "$CONFIG" ]]; then
    echo "slurm/job_body.sh: CONFIG=$CONFIG: no such file (relative paths start at $PWD)" >&2
    exit 2
fi

# Overrides: EXTRA split on whitespace with globbing off (a value like [video,text] is a glob pattern),
# then the script's own arguments as given.
set -f
# shellcheck disable=SC2206  # word splitting is the point here
overrides=(${EXTRA:-})
set +f
overrides+=("$@")

if (( check_only )); then
    # What the job's launcher validates before it starts any process, with the same parser; RUN_DIR when given
    # (its checkpoints decide what a resume would take), else the config's run.dir.
    exec "$CMG_PYTHON" -m trainer.programs.supervisor --check \
        --config_file "${ACCELERATE_CONFIG:-launch/accelerate/cpu_zero2.yaml}" trainer/main.py --config "$CONFIG" "${overrides[@]}" ${RUN_DIR:+"run.dir=$(realpath -m "$RUN_DIR")"}
fi

RUN_DIR="$(realpath -m "${RUN_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}")"
mkdir -p "$RUN_DIR"

# GPUs this job may use on a node: those Slurm granted (SLURM_GPUS_ON_NODE) that really exist (a node
# without cgroups shows every GPU to nvidia-smi; a test cluster may grant GPUs that are not there).
gpus_per_node=0
if command -v nvidia-smi > /dev/null && visible="$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ')"; then
    gpus_per_node="$(( ${SLURM_GPUS_ON_NODE:-0} < visible ? ${SLURM_GPUS_ON_NODE:-0} : visible ))"
fi
num_machines="$SLURM_JOB_NUM_NODES"
if (( gpus_per_node > 0 )); then
    nproc_default="$gpus_per_node"
    if (( num_machines > 1 )); then
        accelerate_default=launch/accelerate/multinode_zero2.yaml
    else
        accelerate_default=launch/accelerate/gpu_zero2.yaml
    fi
else
    # No GPU (the local test cluster, CPU partitions): one gloo process per CPU, one thread each.
    nproc_default="${SLURM_CPUS_PER_TASK:-1}"
    accelerate_default=launch/accelerate/cpu_zero2.yaml
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
nproc_per_node="${NPROC_PER_NODE:-$nproc_default}"

# Read by the per-node command below (srun passes the environment on).
export CONFIG RUN_DIR
export ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-$accelerate_default}"
export CMG_NUM_MACHINES="$num_machines"
export CMG_NUM_PROCESSES="$(( num_machines * nproc_per_node ))"
export CMG_MAIN_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
export CMG_MAIN_PORT="${MAIN_PROCESS_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}"

# The trap first: a USR1 before it would end this script (bash's default for the signal), and the test's
# scancel --signal=USR1 lands as soon as the lines below are printed (tests/system/test_slurm_jobs.py).
preempted=0
trap_fired=0

request_stop() {
    trap_fired=1
    (( preempted )) && return
    preempted=1
    echo "[slurm] USR1: asking the trainer to checkpoint and stop ($RUN_DIR/STOP)"
    touch "$RUN_DIR/STOP"
}
trap request_stop USR1

echo "[slurm] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: $num_machines node(s) x" \
     "$nproc_per_node process(es), $ACCELERATE_CONFIG, main $CMG_MAIN_ADDR:$CMG_MAIN_PORT"
echo "[slurm] config $CONFIG, run dir $RUN_DIR, overrides: ${overrides[*]:-none}"

# Only this run's trainer may answer below: a status.json left by an earlier run must not be read as its, so it
# says "running" (with the run's last checkpoint step) until the trainer or its launcher says how the job ended.
python -c 'import sys; from trainer.run_control import mark_running; mark_running(sys.argv[1])' "$RUN_DIR"

# One task per node, each running accelerate launch under the project's supervisor (trainer/programs/supervisor.py,
# `cmg launch`: signals become one agreed stop, exit 75 after a stop); SLURM_NODEID is expanded by the bash on each
# node (single quotes), not here. --kill-on-bad-exit=0 (whatever the site's KillOnBadExit): after a stop every node's
# launcher exits 75, and srun, for which 75 is a failure, would terminate the nodes that had not yet exited while they
# report the same stop (tests/system/test_multinode_job.py); a node that really fails fails the others through the
# job's collectives, within run.collective_timeout_s (docs/training.md, "Slurm").
srun_cpus=()
[[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && srun_cpus=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
srun --nodes="$num_machines" --ntasks-per-node=1 "${srun_cpus[@]}" --kill-on-bad-exit=0 \
    bash -c 'exec python -m trainer.programs.supervisor --config_file "$ACCELERATE_CONFIG" \
        --num_machines "$CMG_NUM_MACHINES" --num_processes "$CMG_NUM_PROCESSES" --machine_rank "$SLURM_NODEID" \
        --main_process_ip "$CMG_MAIN_ADDR" --main_process_port "$CMG_MAIN_PORT" \
        --deepspeed_multinode_launcher standard \
        trainer/main.py --config "$CONFIG" "$@" "run.dir=$RUN_DIR"' cmg-node "${overrides[@]}" &
srun_pid=$!

# The trap can only run while bash sits in `wait` (not during a foreground command); a trapped signal
# makes `wait` return 128+signal at once, so wait again until srun itself has ended.
keeper_pid=""
while :; do
    if (( preempted )) && [[ -z "$keeper_pid" ]]; then
        # The trainer deletes a STOP file it finds at start-up (left by an earlier job), so a signal that
        # lands during start-up would be lost: keep re-creating the file while srun runs.
        ( while kill -0 "$srun_pid" 2> /dev/null; do touch "$RUN_DIR/STOP"; sleep 2; done ) &
        keeper_pid=$!
    fi
    trap_fired=0
    rc=0
    wait "$srun_pid" || rc=$?
    (( trap_fired && rc > 128 )) || break
done
if [[ -n "$keeper_pid" ]]; then
    kill "$keeper_pid" 2> /dev/null || true
fi

state="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$RUN_DIR/status.json" \
         2> /dev/null || echo none)"
if [[ "$state" == running ]]; then   # no one said how it ended (refused before it started, killed): say it here
    python -c 'import sys; from trainer.run_control import mark_failed; mark_failed(*sys.argv[1:])' "$RUN_DIR" \
        "srun exit code $rc"
    state=failed
fi
if [[ "$rc" == 75 ]]; then   # srun reports every non-zero exit as "error: ... Exited with exit code 75"
    echo "[slurm] srun exit code 75: the trainer stopped after writing a checkpoint (not a failure)"
fi
echo "[slurm] srun exit code $rc, trainer status: $state"

if (( preempted )) && [[ "$state" == stopped ]]; then
    echo "[slurm] checkpoint written; requeueing job $SLURM_JOB_ID to resume"
    if scontrol requeue "$SLURM_JOB_ID"; then
        exit 0   # the requeue ends this run (and puts the job back in the queue)
    fi
    echo "[slurm] scontrol requeue failed (was the job submitted with --requeue?); resubmit to resume" >&2
    exit 75
fi
if [[ "$state" == finished && "$rc" == 0 ]]; then
    exit 0
fi
if [[ "$state" == stopped && "$rc" != 0 ]]; then
    echo "[slurm] the trainer stopped on request without a preemption signal: not requeued; resubmit" \
         "with RUN_DIR=$RUN_DIR to resume" >&2
    exit 75
fi
echo "[slurm] the trainer failed (srun exit code $rc, status $state): not requeued" >&2
exit $(( rc == 0 ? 1 : rc ))
