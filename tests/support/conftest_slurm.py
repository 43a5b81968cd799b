"""pytest plugin with the session-scoped ``slurm_cluster`` fixture: a real local Slurm (slurm_cluster.py).

Registered in tests/conftest.py with ``pytest_plugins = ["conftest_slurm"]``. Knobs: the LOCAL_SLURM_*
variables (e.g. ``LOCAL_SLURM_CPUS=8`` to run several one-CPU jobs at once). Needs root; installs the
Debian packages on first use.
"""

import pytest

from slurm_cluster import LocalSlurm, LocalSlurmConfig


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm; its SLURM_CONF is exported to this process for the session, so every
    `sbatch`/`scontrol` the tests start, and every job (sbatch exports the environment), uses it.
    Stopped at the end of the session, unless another pytest session on this machine still uses it."""
    cluster = LocalSlurm(LocalSlurmConfig.from_env())
    with cluster.shared(), pytest.MonkeyPatch.context() as env:
        for key, value in cluster.env().items():
            env.setenv(key, value)
        yield cluster
