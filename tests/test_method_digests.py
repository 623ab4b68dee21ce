"""The forgetting methods and the split rule give the same bits as before they were restructured.

Each run trains 2 generations of 1 epoch on a tiny dataset; its digest covers the split masks of
generation 0's first weights, the final weights of both generations and the test columns of the
results CSV (dense and slim rows). The expected digests were recorded on the code before the
methods became one module each and the fit channels one rule, and are kept as data in
`tests/data/method_digests.json`. The CPU's kernels make digests machine-specific: they hold on
this project's machines (developers' and CI's are of one kind).

    KE_RECORD_DIGESTS=1 .venv/bin/python -m pytest tests/test_method_digests.py -m "slow or not slow"

records them again (only after a change that is meant to change bits, and said so in its commit).
"""
import csv
import hashlib
import json
import os

import pytest
import torch

from tests.datagen import make_lists_dataset
from tests.helpers import run_cli

DATA = os.path.join(os.path.dirname(__file__), "data", "method_digests.json")
RECORD = os.environ.get("KE_RECORD_DIGESTS") == "1"
COMMON = ["--set", "Flower102Pytorch", "--image_size", "32", "--batch_size", "8",
          "--num_threads", "0", "--lr", "0.05", "--warmup_length", "1", "--test_interval", "1",
          "--num_generations", "2", "--epochs", "1", "--seed", "0"]
SMALL = ["--arch", "Split_mobilenet_v3_small"]
# every method on the small graph-derived model (the default suite)
METHOD_RUNS = {
    "ke_kels": [*SMALL, "--split_rate", "0.5"],
    "ke_wels_zero": [*SMALL, "--split_mode", "wels", "--evolve_mode", "zero"],
    "ke_resnet18": ["--arch", "Split_ResNet18", "--split_rate", "0.5"],
    "llf": [*SMALL, "--forget", "llf", "--reset_layer_name", "classifier", "--reset_bn"],
    "shrink_perturb": [*SMALL, "--forget", "shrink_perturb"],
    "reinit": [*SMALL, "--forget", "reinit"],
    "none_long": [*SMALL, "--forget", "none", "--lr_policy", "long_cosine_lr"],
    "distill": [*SMALL, "--distill_previous", "--lr", "0.01"],
    "cs_kd": [*SMALL, "--cs_kd", "--lr", "0.01"],
}
# every hand-written architecture family (make test-slow)
ARCH_RUNS = {
    "ke_vgg11": ["--arch", "Split_vgg11_bn", "--split_rate", "0.5"],
    "ke_densenet121": ["--arch", "Split_densenet121", "--split_rate", "0.5"],
    "ke_googlenet": ["--arch", "Split_googlenet", "--split_rate", "0.5"],
    "ke_resnet50": ["--arch", "Split_ResNet50", "--split_rate", "0.8"],
}
TEST_COLUMNS = ("Generation", "Split Rate", "Current Tst Top 1", "Current Tst Top 5",
                "Best Tst Top 1", "Best Val Top 1")


def tensor_digest(tensors) -> str:
    h = hashlib.sha256()
    for name, tensor in tensors:
        h.update(name.encode())
        h.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_digest(folder: str, name: str) -> dict:
    exp = os.path.join(folder, name)
    initial = torch.load(os.path.join(exp, "gen_0", "checkpoints", "initial.state"),
                         weights_only=True)["state_dict"]
    masks = tensor_digest((k, v) for k, v in initial.items() if k.endswith("mask"))
    finals = []
    for g in range(2):
        state = torch.load(os.path.join(exp, f"gen_{g}", "checkpoints", "epoch_0.state"),
                           weights_only=True)["state_dict"]
        finals.append(tensor_digest(state.items()))
    with open(os.path.join(exp, f"{name}.csv"), newline="") as f:
        rows = [[row.get(c, "") for c in TEST_COLUMNS] for row in csv.DictReader(f)]
    return {"masks": masks, "gen0": finals[0], "gen1": finals[1],
            "rows": hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digest_data")
    make_lists_dataset(root, "Flower102Pytorch", num_classes=3, per_class=(6, 2, 3),
                       size=(36, 36))
    return root


def expected() -> dict:
    with open(DATA) as f:
        return json.load(f)


def check(name, flags, data_root, tmp_path):
    result = run_cli("--data", data_root, "--log-dir", tmp_path, "--name", name, *COMMON, *flags)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    found = run_digest(str(tmp_path), name)
    if RECORD:
        recorded = expected() if os.path.exists(DATA) else {}
        recorded[name] = found
        with open(DATA, "w") as f:
            json.dump(recorded, f, indent=1, sort_keys=True)
            f.write("\n")
        return
    assert found == expected()[name]


@pytest.mark.parametrize("name", sorted(METHOD_RUNS))
def test_method_bits_unchanged(name, data_root, tmp_path, single_thread):
    check(name, METHOD_RUNS[name], data_root, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ARCH_RUNS))
def test_architecture_bits_unchanged(name, data_root, tmp_path, single_thread):
    check(name, ARCH_RUNS[name], data_root, tmp_path)
