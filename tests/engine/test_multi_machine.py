"""Multi-machine training: two `train_net.py` processes started as two machines meet over tcp and train together.

Each process is one "machine" (`--num-machines 2 --machine-rank R --num-gpus 1`) with its own OUTPUT_DIR, as two
machines would have their own disks; on a CPU-only machine detectron2's launcher uses gloo. Both must exit 0
within a bounded time (on timeout both process groups are killed and the test fails), rank 0 must write the
checkpoint after the training of both ranks, and rank 1 must not write one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import REPO, TINY_CONFIG

TIMEOUT_S = 240  # both processes together; a normal run takes well under a minute on 2 busy cores
MAX_ITER = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_machine(
    rank: int, dist_url: str, output_dir: Path, datasets: Path, log
) -> subprocess.Popen:
    """`train_net.py` as machine `rank` of 2, writing to the open file `log`, in its own process group (so that
    the launcher and the worker it spawns can be killed together)."""
    env = {
        **os.environ,
        "DETECTRON2_DATASETS": str(datasets),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",  # two "machines" share this machine's cores
    }
    cmd = [
        sys.executable, "train_net.py", "--config-file", str(TINY_CONFIG),
        "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank),
        "--dist-url", dist_url,
        "OUTPUT_DIR", str(output_dir), "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Exit codes of `procs`. When one fails or the time is up, the process groups still running are killed
    and their code is None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break  # one failed: the other would wait for it until the gloo timeout
        time.sleep(0.5)
    codes = [p.poll() for p in procs]
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the launcher and the worker it spawned
            p.wait()
    return codes


@pytest.mark.slow  # ~7 s of training and evaluation; the rest is 4 interpreter start-ups
def test_two_machines_train_and_rank0_writes_the_checkpoint(tiny_synthetic_root, tmp_path) -> None:
    dist_url = f"tcp://127.0.0.1:{free_port()}"
    outs = [tmp_path / "machine0" / "out", tmp_path / "machine1" / "out"]
    for out in outs:
        out.parent.mkdir(parents=True)
    log_paths = [out.parent / "stdout.txt" for out in outs]
    with ExitStack() as files:
        procs = [
            start_machine(
                rank, dist_url, out, tiny_synthetic_root.parent, files.enter_context(log.open("w"))
            )
            for rank, (out, log) in enumerate(zip(outs, log_paths))
        ]
        start = time.monotonic()
        codes = wait_all(procs, TIMEOUT_S)
        elapsed = time.monotonic() - start
    logs = [path.read_text() for path in log_paths]
    report = "\n".join(
        f"machine {rank}: exit {'killed' if code is None else code}\n{log[-2500:]}"
        for rank, (code, log) in enumerate(zip(codes, logs))
    )
    assert codes == [0, 0], f"after {elapsed:.0f} s (limit {TIMEOUT_S} s):\n{report}"

    assert "Rank of current process: 0. World size: 2" in logs[0]
    rank1_log = (outs[1] / "log.txt.rank1").read_text()  # detectron2 logs ranks > 0 to a file only
    assert "Rank of current process: 1. World size: 2" in rank1_log
    ckpt = torch.load(outs[0] / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == MAX_ITER - 1
    steps = {int(s["step"]) for s in ckpt["trainer"]["_trainer"]["optimizer"]["state"].values()}
    assert steps == {MAX_ITER}
    assert not list(outs[1].glob("*.pth")), "only rank 0 writes checkpoints"
    # the evaluation gathered the predictions of both ranks on rank 0
    assert "Evaluation results for segm" in logs[0]
