"""Two nodes x one process on this machine: two ``torchrun`` agents meet at a c10d rendezvous on the loopback
address, exactly as two machines would at ``--rdzv-endpoint HEAD:PORT``; the ranks end with identical parameters.

The only difference from a real cluster is the network; the stage code sees ``--nnodes 2``, a rank per node and
a process group spanning both (gloo on CPU)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distributed_helpers import ROOT, assert_ranks_agree, free_port, load_ranks, worker_env, write_driver
from rlhf.core.tracking import read_metrics


def launch_nodes(script_and_args: list[str], logs: Path, timeout: float = 240) -> list[int]:
    """Start one torchrun agent per node (node 0 hosts the rendezvous store) and wait for both; their exit codes.
    Output goes to files: two children filling pipes nobody reads could block each other at a collective."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-id", "multinode-test", "--rdzv-conf", f"is_host={int(node == 0)}", "--max-restarts", "0",
               *script_and_args]
        log = open(logs / f"node{node}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=worker_env(), stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    try:
        for proc, log in procs:
            codes.append(proc.wait(timeout=timeout))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return codes


def tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("node*.log")))


@pytest.mark.distributed
def test_two_nodes_over_loopback_end_with_identical_parameters(tmp_path):
    codes = launch_nodes([str(write_driver(tmp_path)), str(tmp_path), "2"], tmp_path)
    assert codes == [0, 0], tails(tmp_path)
    ranks = load_ranks(tmp_path, 2)
    assert sorted(r["node"] for r in ranks) == ["0", "1"]  # one process on each node, not two on one
    assert_ranks_agree(ranks)


@pytest.mark.distributed
def test_stage_script_as_two_nodes_writes_one_run(tmp_path):
    """The real entry point: both nodes share this filesystem, as cluster nodes share theirs; one run folder, one
    final adapter, and a checkpoint holding each node's RNG state."""
    runs = tmp_path / "runs"
    codes = launch_nodes(["pipelines/ppo.py", "--config", "pipelines/configs/ppo_tiny.yaml", "--run.output_dir",
                          str(runs), "--train.max_steps", "2", "--train.save_steps", "2", "--update.batch_size", "2",
                          "--update.mini_batch_size", "2", "--update.micro_batch_size", "2"], tmp_path)
    assert codes == [0, 0], tails(tmp_path)
    [run] = list(runs.iterdir())  # no run name: the nodes agree on rank 0's timestamped folder
    assert (run / "final" / "adapter" / "adapter_config.json").is_file()
    assert {p.name for p in (run / "checkpoints" / "step-000002").glob("rng-rank*.pt")} == {"rng-rank0.pt",
                                                                                           "rng-rank1.pt"}
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "reward/composite" in r]
    assert steps == [1, 2]  # one logger for the cluster: node 1 writes no records
