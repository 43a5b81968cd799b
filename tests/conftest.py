pytest_plugins = ["conftest_slurm"]
