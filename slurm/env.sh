# shellcheck shell=bash
# How every script in slurm/ finds the project's Python (sourced by job_body.sh, submit.sh and continual.sh; not a
# script itself). The first that applies:
#   1. $PYTHON, when set (used as given: a wrong one fails loudly, it is not skipped);
#   2. the active virtualenv ($VIRTUAL_ENV/bin/python);
#   3. the repository's own .venv (what `make install` creates), so nothing needs activating;
#   4. python3 on PATH (a conda environment, a module system).
# 2-4 count only if that Python imports torch, accelerate and mlflow. The result is exported as CMG_PYTHON, and its
# directory goes first on PATH, so `python` and `accelerate` in the job's steps (srun passes the environment on) are
# the same environment's. Nothing found: a message and exit status 2, before anything is submitted or started.
#
# Needs: cmg_repo, the repository root, set by the caller.

cmg_has_project_deps() {
    "$1" -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("torch", "accelerate", "mlflow")))' \
        2> /dev/null
}

if [[ -n "${PYTHON:-}" ]]; then
    CMG_PYTHON="$(command -v "$PYTHON" || true)"
    if [[ -z "$CMG_PYTHON" ]]; then
        echo "slurm/env.sh: PYTHON=$PYTHON: no such program" >&2
        exit 2
    fi
else
    CMG_PYTHON=""
    for candidate in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "$cmg_repo/.venv/bin/python" "$(command -v python3 || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]] && cmg_has_project_deps "$candidate"; then
            CMG_PYTHON="$candidate"
            break
        fi
    done
    if [[ -z "$CMG_PYTHON" ]]; then
        echo "slurm/env.sh: no Python with the project's packages (torch, accelerate, mlflow): run \`make install\`" \
             "in $cmg_repo (creates .venv), activate an environment that has them, or set PYTHON" >&2
        exit 2
    fi
fi
export CMG_PYTHON
PATH="$(dirname "$CMG_PYTHON"):$PATH"
export PATH
