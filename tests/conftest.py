import pytest
import torch

# fixtures that test modules of several levels share (tests/support/; tests/README.md): pytest registers every
# fixture of these modules for the whole suite, so a test takes one by naming it; none of them is autouse
pytest_plugins = ["conftest_slurm", "backbone_utils", "feature_utils", "tracking_utils"]

# module-scoped fixtures that train runs (or start a server) several tests of their module read: each pytest-xdist
# worker that ran one of those tests would build its own
SHARED_RUNS = frozenset({"zero2_reference", "runs", "first_phase", "mlflow_server"})
# the local Slurm clusters (tests/support/conftest_slurm.py)
SLURM_CLUSTERS = frozenset({"slurm_cluster", "slurm_two_nodes"})


def pytest_collection_modifyitems(items):
    """Every test of ``tests/dist`` compares ranks with one process: mark it ``numerics``; every test of ``tests/gpu``
    needs a GPU: mark it ``gpu``. Every test on a local Slurm runs in one pytest-xdist worker (group ``slurm``): their
    jobs would compete for the same CPUs anyway. The
    tests that read one module-scoped training run (``SHARED_RUNS``) run in one worker too, so that it is built once
    (tests/README.md, "Running")."""
    for item in items:
        if item.path.parent.name == "dist":
            item.add_marker(pytest.mark.numerics)
        if item.path.parent.name == "gpu":
            item.add_marker(pytest.mark.gpu)
        fixtures = getattr(item, "fixturenames", ())
        if SLURM_CLUSTERS.intersection(fixtures):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        for fixture in sorted(SHARED_RUNS.intersection(fixtures)):
            item.add_marker(pytest.mark.xdist_group(f"{item.path.stem}.{fixture}"))
    # pytest-xdist hands out work in collection order as workers free up: the longest work first, so that no worker
    # waits alone for it at the end (the end-to-end run, then the Slurm group); the rest keep their order
    items.sort(key=lambda item: (item.path.name != "test_e2e.py",
                                 not SLURM_CLUSTERS.intersection(getattr(item, "fixturenames", ()))))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is fastest, and the 2-core box is shared (torch's default would oversubscribe).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
