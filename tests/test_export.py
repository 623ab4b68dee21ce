"""Standalone slim-model export and loading (utils/export.py)."""
import os
import stat
import subprocess
import sys

import pytest
import torch

from configs.base_config import Config
from data.formats import normalisation
from data.transforms import eval_resize
from errors import UserError
from models.evolution import extract_slim
from models.factory import get_model
from utils.export import export_slim, load_exported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dense_model(arch="Split_ResNet18", split_rate="0.5", *extra):
    cfg = Config().parse(["-a", arch, "--split_rate", split_rate, "--set", "CUB200",
                          "--image_size", "32", *extra])
    cfg.num_cls = 3
    torch.manual_seed(0)
    model = get_model(cfg)
    with torch.no_grad():                      # non-trivial BN statistics and affine values
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32))
    return cfg, model.eval()


def export(dense, cfg, path, class_names, extra=None):
    """export_slim with the preprocessing train_KE_cls.py passes for this configuration."""
    mean, std = normalisation(cfg.set)
    return export_slim(dense, cfg, path, class_names, mean, std, eval_resize(cfg.image_size),
                       extra=extra)


def test_exported_logits_equal_the_slim_models(tmp_path, single_thread):
    cfg, dense = dense_model()
    path = str(tmp_path / "out" / "slim.pt2")
    meta = export(dense, cfg, path, ["ant", "bee", 7], extra={"generation": 4})
    assert os.path.isfile(path) and not [f for f in os.listdir(tmp_path / "out") if f != "slim.pt2"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask     # like any new file
    slim = extract_slim(get_model(cfg, slim=True), dense).eval()
    model = load_exported(path)
    loaded_meta = model.metadata
    assert loaded_meta == meta and model.metadata == meta
    assert meta["arch"] == "Split_ResNet18" and meta["split_rate"] == 0.5
    assert meta["class_names"] == ["ant", "bee", 7] and meta["num_classes"] == 3
    assert meta["image_size"] == 32 and meta["eval_resize"] == 37 and meta["generation"] == 4
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["dataset"] == {"set": "CUB200", "data": os.path.abspath(cfg.data)}
    x = torch.randn(5, 3, 32, 32)                         # another batch size than exported with
    with torch.no_grad():
        expected = slim(x)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.shape == (5, 3) and not got.requires_grad
    # the slim model is really the small one: its stem has 64 * 0.5 = 32 filters
    stem = [p for n, p in model.named_parameters() if p.dim() == 4][0]
    assert stem.shape == (32, 3, 7, 7)
    assert model.eval() is model and not model.training
    with pytest.raises(RuntimeError, match="inference only"):
        model.train()
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        model(torch.randn(1, 3, 40, 40))


def test_cifar_export_records_cifar_normalisation(tmp_path, single_thread):
    cfg, dense = dense_model("Split_vgg11_bn", "0.25")
    cfg.set = "CIFAR100"
    meta = export(dense, cfg, str(tmp_path / "v.pt2"), [0, 1, 2])
    assert meta["class_names"] == [0, 1, 2] and meta["split_rate"] == 0.25
    assert meta["dataset"]["set"] == "CIFAR100"
    assert meta["mean"] == pytest.approx([0.5071, 0.4865, 0.4409])
    model = load_exported(str(tmp_path / "v.pt2"))
    slim = extract_slim(get_model(cfg, slim=True), dense).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), slim(x), rtol=1e-5, atol=1e-6)


STANDALONE = r"""
import importlib.abc, json, sys, torch
PROJECT = {"layers", "models", "utils", "data", "configs", "trainers", "constants"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in PROJECT - ALLOWED:
            raise ImportError("blocked: " + name)
ALLOWED = set()
sys.meta_path.insert(0, Block())
for name in PROJECT:
    sys.modules.pop(name, None)
sys.modules["layers"] = None
path, io_path, repo = sys.argv[1:4]
assert not any(p and p.rstrip("/") == repo for p in sys.path), sys.path
x, expected = torch.load(io_path)
# 1. plain torch, nothing of the project importable
extra = {"ke_metadata.json": ""}
model = torch.export.load(path, extra_files=extra).module()
meta = json.loads(extra["ke_metadata.json"])
assert meta["class_names"] == ["a", "b", "c"], meta
assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)
# 2. the project's loader, with the layers and models still unimportable
ALLOWED.update({"utils"})
sys.path.insert(0, repo)
from utils.export import load_exported
model = load_exported(path)
meta = model.metadata
assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)
assert "layers" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
assert "models" not in sys.modules
print("STANDALONE-OK", meta["arch"])
"""


def test_loading_needs_nothing_from_the_project(tmp_path, single_thread):
    cfg, dense = dense_model()
    path = str(tmp_path / "slim.pt2")
    export(dense, cfg, path, ["a", "b", "c"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = extract_slim(get_model(cfg, slim=True), dense).eval()(x)
    torch.save((x, expected), tmp_path / "io.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-c", STANDALONE, path, str(tmp_path / "io.pt"), REPO],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "STANDALONE-OK Split_ResNet18" in result.stdout


def test_export_errors(tmp_path, single_thread):
    cfg, dense = dense_model("Split_ResNet18", "0.5", "--split_mode", "wels")
    with pytest.raises(ValueError, match="KELS"):
        export(dense, cfg, str(tmp_path / "w.pt2"), [0, 1, 2])
    cfg, dense = dense_model("Split_ResNet18", "0.5")
    with pytest.raises(ValueError, match="class names"):
        export(dense, cfg, str(tmp_path / "w.pt2"), ["only one"])
    assert not os.listdir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_exported(str(tmp_path / "none.pt2"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "not_export.pt2")      # a zip, but no program
    with pytest.raises(UserError, match=r"unknown member \(data.pkl\).*written by --export_slim"):
        load_exported(str(tmp_path / "not_export.pt2"))
    (tmp_path / "text.pt2").write_text("hello\n")
    with pytest.raises(UserError, match=r"is not a torch.export \(.pt2\) file"):
        load_exported(str(tmp_path / "text.pt2"))
