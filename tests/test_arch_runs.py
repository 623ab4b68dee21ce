"""One short KE run per architecture family through train_KE_cls.py, the default (ResNet-18,
no --arch) included; each run in its test's own folder, deleted once it passed.

Only the default runs in `make test`; the other families are slow (`make test-slow`): each is
half a minute to a minute on 2 CPU cores (VGG's 25088 x 4096 classifier the longest), and their
split layers are checked without training in tests/test_more_archs.py.
"""
import json

import pandas as pd
import pytest

from tests.datagen import make_lists_dataset
from tests.helpers import TINY, run_cli


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("archs")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(8, 2, 3),
                       size=(36, 36))
    return base


@pytest.mark.parametrize("arch", [None, *[pytest.param(a, marks=pytest.mark.slow) for a in
                                         ("Split_densenet121", "Split_googlenet", "Split_vgg11_bn")]])
def test_two_generations_with_slim_rows(datasets, arch, tmp_path):
    name = arch or "default"
    result = run_cli("--data", str(datasets / "datasets"), "--log-dir", str(tmp_path),
                     "--name", name, *(["--arch", arch] if arch else []), "--num_generations",
                     "2", "--epochs", "1", *TINY)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    settings = json.loads((tmp_path / name / "settings.json").read_text())
    assert settings["arch"] == (arch or "Split_ResNet18")
    table = pd.read_csv(tmp_path / name / f"{name}.csv")
    assert table["Generation"].tolist() == [0, 0, 1, 1]
    assert table["Split Rate"].astype(str).tolist() == ["0.5", "slim", "0.5", "slim"]
    assert "generation | dense test top-1" in result.stdout
