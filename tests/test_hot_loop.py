"""The training loop's hot path: what it waits for on the device, and what it builds again."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT


def torchrun(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


# --- no sync per training step under torchrun -------------------------------------------------

@pytest.fixture(scope="module")
def sync_counts(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("this PyTorch build has no torch.distributed")
    out = tmp_path_factory.mktemp("sync") / "counts.json"
    result = torchrun(os.path.join(ROOT, "tests", "dist_sync_worker.py"), "120", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_an_epoch_under_torchrun_syncs_far_less_than_once_a_step(sync_counts):
    for rank in sync_counts:
        steps, plain = rank["steps"], rank["plain"]
        assert steps == 120 and plain["stopped_after"] is None and plain["count"] == 480
        # the stop agreed after batches 50, 100 and 120, then the end-of-epoch sums and check
        assert plain["collectives"] / steps <= 0.05, plain["which"]
        assert plain["reads"] / steps <= 0.1, plain["which"]


def test_the_print_freq_line_reads_the_device_only_when_due(sync_counts):
    for rank in sync_counts:
        steps, plain, printed = rank["steps"], rank["plain"], rank["print_every_10"]
        assert printed["collectives"] == plain["collectives"]
        assert plain["reads"] < printed["reads"] <= plain["reads"] + steps // 10, printed["which"]


def test_a_stop_asked_on_one_rank_stops_every_rank_at_the_same_batch(sync_counts):
    for rank in sync_counts:
        stop = rank["stop"]
        assert stop["stopped_after"] == rank["check_every"] == 50
        assert stop["count"] == 50 * 2 * 2          # both ranks' batches of 2, summed
