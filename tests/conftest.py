import pytest
import torch

pytest_plugins = ["conftest_slurm"]


def pytest_collection_modifyitems(items):
    """Every test of ``tests/dist`` compares ranks with one process: mark it ``numerics``. Every test on the local
    Slurm runs in one pytest-xdist worker (group ``slurm``): one cluster, whose jobs queue for its CPUs anyway
    (tests/README.md, "Running")."""
    for item in items:
        if item.path.parent.name == "dist":
            item.add_marker(pytest.mark.numerics)
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is fastest, and the 2-core box is shared (torch's default would oversubscribe).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
