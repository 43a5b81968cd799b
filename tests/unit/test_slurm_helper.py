"""The local Slurm helper (tests/support/slurm_cluster.py) without a cluster: ``scontrol`` record parsing, the
LOCAL_SLURM_* knobs, and the port check that runs before anything is created. Against a real slurmctld + slurmd +
munged: tests/system/test_slurm_cluster.py."""

import socket
from pathlib import Path

import pytest

from dist_utils import free_port
from slurm_cluster import LocalSlurm, LocalSlurmConfig, SlurmClusterError, parse_scontrol_record


def test_scontrol_record_parsing_keeps_spaces_and_equals_in_values():
    line = (
        "JobId=7 JobName=wrap JobState=PENDING Reason=BeginTime Dependency=(null) Restarts=1 "
        "TRES=cpu=1,mem=1G,node=1 StdOut=/tmp/a b/out-7.txt ExitCode=0:0"
    )
    record = parse_scontrol_record(line)
    assert record["JobId"] == "7"
    assert record["JobState"] == "PENDING"
    assert record["Reason"] == "BeginTime"
    assert record["Restarts"] == "1"
    assert record["TRES"] == "cpu=1,mem=1G,node=1"
    assert record["StdOut"] == "/tmp/a b/out-7.txt"
    assert record["ExitCode"] == "0:0"
    assert len(record) == 9


def test_config_from_env_reads_knobs_and_names_a_bad_one():
    cfg = LocalSlurmConfig.from_env(
        {"LOCAL_SLURM_DIR": "/tmp/x", "LOCAL_SLURM_CPUS": "8", "LOCAL_SLURM_PORT": "7000", "LOCAL_SLURM_KEEP": "1"}
    )
    assert (cfg.state_dir, cfg.cpus, cfg.ctld_port, cfg.slurmd_port, cfg.keep) == ("/tmp/x", 8, 7000, 7001, True)
    assert LocalSlurmConfig.from_env({}) == LocalSlurmConfig()
    with pytest.raises(SlurmClusterError, match="LOCAL_SLURM_CPUS='eight'"):
        LocalSlurmConfig.from_env({"LOCAL_SLURM_CPUS": "eight"})
    with pytest.raises(SlurmClusterError, match="LOCAL_SLURM_INSTALL='maybe'"):
        LocalSlurmConfig.from_env({"LOCAL_SLURM_INSTALL": "maybe"})
    assert LocalSlurmConfig.from_env({"LOCAL_SLURM_NODES": "2"}).nodes == 2
    with pytest.raises(SlurmClusterError, match="LOCAL_SLURM_NODES=0: a cluster needs at least one node"):
        LocalSlurmConfig.from_env({"LOCAL_SLURM_NODES": "0"})


def test_two_nodes_are_two_slurmd_on_this_host_with_their_own_ports():
    cluster = LocalSlurm(LocalSlurmConfig(state_dir="/tmp/x", nodes=2, cpus=1, mem_mb=2048, ctld_port=7000,
                                          slurmd_port=7001))
    host = cluster.node
    assert cluster.nodes == [host, f"{host}-1"]
    conf = cluster.render_conf().splitlines()
    assert [line for line in conf if line.startswith(("NodeName=", "PartitionName="))] == [
        f"NodeName={host} NodeHostname={host} NodeAddr=127.0.0.1 Port=7001 CPUs=1 RealMemory=2048 State=UNKNOWN",
        f"NodeName={host}-1 NodeHostname={host} NodeAddr=127.0.0.1 Port=7002 CPUs=1 RealMemory=2048 State=UNKNOWN",
        f"PartitionName=debug Nodes={host},{host}-1 Default=YES MaxTime=INFINITE OverSubscribe=NO State=UP"]
    assert "SlurmdSpoolDir=/tmp/x/spool/%n" in conf                  # one spool directory per slurmd
    assert cluster.pidfiles[f"slurmd@{host}-1"] == Path("/tmp/x/run") / f"slurmd-{host}-1.pid"


def test_port_conflict_fails_clearly_before_creating_anything(tmp_path):
    state_dir = tmp_path / "slurm"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cluster = LocalSlurm(LocalSlurmConfig(state_dir=str(state_dir), ctld_port=port, slurmd_port=free_port()))
        with pytest.raises(SlurmClusterError, match=rf"port {port} \(SlurmctldPort\) is already in use"):
            cluster.up()
    assert not state_dir.exists()
