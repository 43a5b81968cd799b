"""pytest plugin with the local Slurm fixtures: ``slurm_cluster`` (session, one node) and ``slurm_two_nodes``
(module, two nodes on this host), real clusters of slurm_cluster.py.

Registered in tests/conftest.py with ``pytest_plugins = ["conftest_slurm"]``. Knobs: the LOCAL_SLURM_*
variables (e.g. ``LOCAL_SLURM_CPUS=8`` to run several one-CPU jobs at once). Needs root; installs the
Debian packages on first use.
"""

import dataclasses

import pytest

from slurm_cluster import LocalSlurm, LocalSlurmConfig


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node Slurm; its SLURM_CONF is exported to this process for the session, so every
    `sbatch`/`scontrol` the tests start, and every job (sbatch exports the environment), uses it.
    Stopped at the end of the session, unless another pytest session on this machine still uses it."""
    cluster = LocalSlurm(LocalSlurmConfig.from_env())
    with cluster.shared(), pytest.MonkeyPatch.context() as env:
        for key, value in cluster.env().items():
            env.setenv(key, value)
        yield cluster


@pytest.fixture(scope="module")
def slurm_two_nodes():
    """A second local Slurm of two nodes (two slurmd on this host, one CPU each), beside ``slurm_cluster``'s: its
    own state dir (``<LOCAL_SLURM_DIR>-2nodes``) and ports (``LOCAL_SLURM_PORT`` + 10, + 11, + 12), so that the
    single-node cluster other tests share is never reconfigured. Clients reach it through ``cluster.run``."""
    base = LocalSlurmConfig.from_env()
    cluster = LocalSlurm(dataclasses.replace(base, state_dir=f"{base.state_dir}-2nodes", nodes=2, cpus=1, gpus=0,
                                             ctld_port=base.ctld_port + 10, slurmd_port=base.ctld_port + 11))
    with cluster.shared():
        yield cluster
