"""Checks that need a CUDA device (marker `gpu`; skipped without one). benchmarks/gpu_check.sh
runs them: fp16 with the gradient scaler, bf16, channels-last, --compile, exact resume on the
GPU, the cached uint8 path normalised on the GPU, the training crops batched on the GPU (what
--batched_crops auto takes there), a 1-process NCCL torchrun, and two sweep points sharing one
GPU (--runs_per_gpu 2)."""
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn as nn

from data.batched_crops import collate_uncropped
from data.transforms import crop_box, draw_flip, normalize_batch
from tests.datagen import make_lists_dataset
from tests.helpers import ROOT, SMALL, run_cli
from utils.performance import Precision

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ARGS = ["--image_size", "32", "--batch_size", "6", "--num_threads", "0", "--lr", "0.05",
        "--warmup_length", "1", "--test_interval", "1", "--seed", "7", "--num_generations", "2",
        "--epochs", "3", "--gpu", "0", "--save_every_minutes", "0", *SMALL]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(6, 2, 2),
                       size=(36, 36))
    return base / "datasets"


def run(datasets, log_dir, name, *extra, crops="training crops: batched on cuda:0"):
    result = run_cli("--data", str(datasets), "--log-dir", str(log_dir), "--name", name,
                     *ARGS, *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert " on cuda" in result.stdout and crops in result.stdout
    return pd.read_csv(log_dir / name / f"{name}.csv")


def test_fp16_step_with_the_gradient_scaler_updates_float32_weights():
    device = torch.device("cuda", 0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4)).to(device)
    model(torch.zeros(1, 3, 8, 8, device=device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = Precision("fp16", device)
    before = model[0].weight.detach().clone()
    with precision.autocast():
        out = model(torch.randn(4, 3, 8, 8, device=device))
        loss = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3], device=device))
    assert out.dtype == torch.float16
    precision.step(loss, optimizer)
    assert model[0].weight.dtype == torch.float32 and not torch.equal(model[0].weight, before)
    assert precision.state_dict() and precision.state_dict()["scale"] > 0


@pytest.mark.parametrize("flags", [["--amp", "bf16", "--channels_last"], ["--amp", "fp16"],
                                   ["--compile"]])
def test_runs_on_the_gpu(datasets, tmp_path, flags):
    rows = run(datasets, tmp_path, "run", "--cache_images", *flags)
    assert len(rows) == 4 and rows["Generation"].tolist() == [0, 0, 1, 1]


def test_runs_on_the_gpu_with_crops_per_image(datasets, tmp_path):
    rows = run(datasets, tmp_path, "run", "--cache_images", "--batched_crops", "off",
               crops="training crops: per image in the data loader")
    assert len(rows) == 4


def test_batched_crops_on_the_gpu_match_the_cpus():
    generator = torch.Generator().manual_seed(0)
    items = []
    for k, (height, width) in enumerate([(64, 90), (80, 64), (64, 64), (70, 100)]):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        torch.manual_seed(k)
        items.append(((image, crop_box(height, width), draw_flip(), 32), k))
    batch, _ = collate_uncropped(items)
    on_gpu = batch._replace(images=batch.images.pin_memory()).on_device(
        torch.device("cuda", 0), torch.channels_last)
    assert on_gpu.is_cuda and on_gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(on_gpu.cpu(), batch.on_device("cpu"), rtol=0, atol=1e-4)


def test_cached_uint8_batches_normalise_on_the_gpu_as_on_the_cpu():
    pixels = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    on_gpu = normalize_batch(pixels.cuda(non_blocking=True)).cpu()
    torch.testing.assert_close(on_gpu, normalize_batch(pixels), rtol=0, atol=1e-6)


def test_killed_gpu_run_resumes_to_identical_results(datasets, tmp_path):
    straight = run(datasets, tmp_path, "straight", "--cache_images")
    exp = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_KE_cls.py"), "--data",
                             str(datasets), "--log-dir", str(tmp_path), "--name", "killed",
                             "--cache_images", *ARGS], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = exp / "gen_1" / "checkpoints" / "resume.state"
    while proc.poll() is None and not target.exists():
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli("--log-dir", str(tmp_path), "--name", "killed", "--data", str(datasets),
                      "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = pd.read_csv(exp / "killed.csv")
    columns = [c for c in straight.columns if c not in ("Date Finished", "Name")]
    pd.testing.assert_frame_equal(rows[columns], straight[columns])
    for g in (0, 1):
        a = torch.load(tmp_path / "straight" / f"gen_{g}" / "checkpoints" / "epoch_2.state",
                       weights_only=True)["state_dict"]
        b = torch.load(exp / f"gen_{g}" / "checkpoints" / "epoch_2.state",
                       weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_process_nccl_torchrun(datasets, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=1", os.path.join(ROOT, "train_KE_cls.py"),
                             "--data", str(datasets), "--log-dir", str(tmp_path), "--name", "ddp",
                             *ARGS], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert torch.distributed.is_nccl_available()       # the backend utils/distributed picks on CUDA
    assert len(pd.read_csv(tmp_path / "ddp" / "ddp.csv")) == 4


def test_two_sweep_points_share_one_gpu_with_runs_per_gpu(datasets, tmp_path):
    device = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=device, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "trainers.sweep", "--name", "shared",
                             "--log-dir", str(tmp_path), "--grid", "label_smoothing=0,0.1",
                             "--runs_per_gpu", "2", "--", "--data", str(datasets), *ARGS],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"2 point(s) at once on GPU(s) {device}, " in result.stdout
    assert "shared: 0 done, 2 running, 0 failed, 0 pending" in result.stdout
    for name in ("label_smoothing-0", "label_smoothing-0.1"):
        assert " on cuda" in (tmp_path / "shared" / "logs" / f"{name}.log").read_text()
        assert len(pd.read_csv(tmp_path / "shared" / name / f"{name}.csv")) == 4
