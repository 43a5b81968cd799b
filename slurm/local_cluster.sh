#!/usr/bin/env bash
# A real Slurm cluster on 127.0.0.1 for tests and CI (root, no systemd): one node, or LOCAL_SLURM_NODES=N slurmds.
#   slurm/local_cluster.sh up       # install if missing, start, wait until ready; prints `export SLURM_CONF=...`
#   slurm/local_cluster.sh env      # prints `export SLURM_CONF=...`   (eval "$(slurm/local_cluster.sh env)")
#   slurm/local_cluster.sh status   # exit 0 when up and healthy
#   slurm/local_cluster.sh down     # cancel all jobs, stop every process of the cluster by PID, remove its dir
#   slurm/local_cluster.sh bench    # time: cold up -> first job COMPLETED, second up, down
# Knobs: LOCAL_SLURM_DIR/_NODES/_CPUS/_GPUS/_MEM_MB/_PORT/_INSTALL/_KEEP/_TIMEOUT (see tests/support/slurm_cluster.py,
# the one implementation; this file only runs it with the system python3, stdlib only).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/../tests/support/slurm_cluster.py" "$@"
