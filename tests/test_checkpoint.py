"""Checkpoint files: a kill mid-write keeps the previous file, and every way a file can fail to
fit gets a one-line UserError that says what is wrong.

(The results CSV's atomic append is covered by tests/test_utils.py::test_csv_write_is_atomic.)
"""
import errno
import os
import pickle

import pytest
import torch

from configs.base_config import Config
from errors import UserError
from models import factory
from utils import checkpoint, safe_files
from utils.checkpoint import atomic_link, atomic_save, load_checkpoint, load_weights

ARCH = "Split_ResNet18"


def user_error(call, *args) -> str:
    with pytest.raises(UserError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    return message


# ---- atomic writes -------------------------------------------------------------------------------

def killed_before_rename(src, dst):
    raise KeyboardInterrupt("killed between writing the temporary file and the rename")


def test_kill_before_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "resume.state"
    old = {"epoch": 1, "state_dict": {"w": torch.arange(6.0)}}
    atomic_save(old, path)
    monkeypatch.setattr(checkpoint.os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 2, "state_dict": {"w": torch.ones(6)}}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["resume.state"]          # no temporary file left behind
    loaded = load_checkpoint(str(path))
    assert loaded["epoch"] == 1 and torch.equal(loaded["state_dict"]["w"], old["state_dict"]["w"])
    atomic_save({"epoch": 2, "state_dict": {"w": torch.ones(6)}}, path)   # and it still works
    assert load_checkpoint(str(path))["epoch"] == 2


def test_kill_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model_best.pth"
    atomic_save({"state_dict": {"w": torch.zeros(3)}}, path)
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"state_dict": {"w": torch.ones(3)}}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model_best.pth"]
    assert torch.equal(load_checkpoint(str(path))["state_dict"]["w"], torch.zeros(3))


def test_a_second_name_shares_the_file_until_either_is_written_again(tmp_path):
    best, resume = tmp_path / "model_best.pth", tmp_path / "resume.state"
    atomic_save({"epoch": 3, "state_dict": {"w": torch.arange(4.0)}}, best)
    atomic_save({"epoch": 2, "state_dict": {}}, resume)     # an older file under the second name
    atomic_link(best, resume)
    assert os.path.samefile(best, resume) and os.stat(best).st_nlink == 2
    assert load_checkpoint(str(resume))["epoch"] == 3
    atomic_save({"epoch": 4, "state_dict": {}}, resume)     # the next epoch: best keeps epoch 3
    assert not os.path.samefile(best, resume)
    assert load_checkpoint(str(best))["epoch"] == 3 and load_checkpoint(str(resume))["epoch"] == 4
    assert sorted(os.listdir(tmp_path)) == ["model_best.pth", "resume.state"]


def test_without_hard_links_the_second_name_is_a_copy(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    source, other = tmp_path / "epoch_9.state", tmp_path / "resume.state"
    atomic_save({"epoch": 9, "state_dict": {"w": torch.ones(3)}}, source)
    monkeypatch.setattr(checkpoint.os, "link", no_links)
    atomic_link(source, other)
    assert not os.path.samefile(source, other)
    assert other.read_bytes() == source.read_bytes()
    assert os.stat(other).st_mode & 0o777 == safe_files.FILE_MODE
    assert sorted(os.listdir(tmp_path)) == ["epoch_9.state", "resume.state"]


def test_a_full_disk_while_linking_leaves_no_temporary(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    source = tmp_path / "epoch_9.state"
    atomic_save({"epoch": 9}, source)
    monkeypatch.setattr(checkpoint.os, "link", full)
    with pytest.raises(OSError) as info:
        atomic_link(source, tmp_path / "resume.state")
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["epoch_9.state"]


# ---- unreadable files ----------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = str(tmp_path / "nothing.state")
    message = user_error(load_checkpoint, path)
    assert path in message and "does not exist" in message


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.state"
    path.write_bytes(os.urandom(4096))
    message = user_error(load_checkpoint, str(path))
    assert str(path) in message and "not a readable PyTorch checkpoint" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert "not a readable PyTorch checkpoint" in user_error(load_checkpoint, str(path))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_of_a_list(tmp_path, writer):
    path = tmp_path / "list.pth"
    if writer == "torch":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(pickle.dumps([1, 2, 3]))
    message = user_error(load_checkpoint, str(path))
    assert str(path) in message
    assert "holds no model weights" in message or "not a readable PyTorch checkpoint" in message


def test_state_dict_that_is_not_a_mapping_of_tensors(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": [torch.zeros(1)]}, path)
    assert "not a mapping of names to tensors" in user_error(load_checkpoint, str(path))


# ---- files that do not fit the model -------------------------------------------------------------

@pytest.fixture(scope="module")
def cfg():
    return Config().parse(["--arch", ARCH, "--split_rate", "0.5"])


@pytest.fixture(scope="module")
def trained(cfg):
    """A checkpoint dict, as train_KE_cls.py writes it, of a distinct ResNet18 model."""
    torch.manual_seed(1)
    model = factory.get_model(cfg)
    return {"arch": ARCH, "state_dict": model.state_dict(), "config": {"split_rate": 0.5}}


def save(tmp_path, obj, name="weights.pth") -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def test_fitting_checkpoint_loads(tmp_path, cfg, trained):
    model = factory.get_model(cfg)
    load_weights(model, save(tmp_path, trained), cfg)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained["state_dict"].items())


def test_checkpoint_of_another_architecture(tmp_path, cfg):
    other = factory.get_model(Config().parse(["--arch", "Split_ResNet34"]))
    path = save(tmp_path, {"arch": "Split_ResNet34", "state_dict": other.state_dict()})
    message = user_error(load_weights, factory.get_model(cfg), path, cfg)
    assert path in message and "Split_ResNet34" in message and f"--arch {ARCH}" in message
    # the same weights without the arch tag: told by the tensors
    bare = save(tmp_path, other.state_dict(), "bare.pth")
    message = user_error(load_weights, factory.get_model(cfg), bare, cfg)
    assert "does not fit --arch Split_ResNet18" in message and "unexpected" in message


def test_checkpoint_of_another_split_rate(tmp_path, cfg):
    other_cfg = Config().parse(["--arch", ARCH, "--split_rate", "0.25"])
    weights = factory.get_model(other_cfg).state_dict()
    path = save(tmp_path, {"arch": ARCH, "state_dict": weights, "config": {"split_rate": 0.25}})
    message = user_error(load_weights, factory.get_model(cfg), path, cfg)
    assert "--split_rate 0.25" in message and "not 0.5" in message
    # without the saved configuration the masks give it away (the shapes are the same)
    path = save(tmp_path, {"arch": ARCH, "state_dict": weights}, "no_config.pth")
    model = factory.get_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = user_error(load_weights, model, path, cfg)
    assert "masks that differ" in message and "--split_rate 0.5" in message and "conv1.mask" in message
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())   # untouched


def test_state_dict_with_a_missing_key(tmp_path, cfg, trained):
    weights = dict(trained["state_dict"])
    del weights["layer2.0.conv1.weight"]
    path = save(tmp_path, {"arch": ARCH, "state_dict": weights})
    message = user_error(load_weights, factory.get_model(cfg), path, cfg)
    assert "1 missing (first: layer2.0.conv1.weight)" in message


def test_state_dict_with_a_tensor_of_another_shape(tmp_path, cfg, trained):
    weights = dict(trained["state_dict"])
    weights["fc.weight"] = torch.zeros(3, 512)
    path = save(tmp_path, {"arch": ARCH, "state_dict": weights})
    message = user_error(load_weights, factory.get_model(cfg), path, cfg)
    assert "of another shape (first: fc.weight)" in message


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the loader ran it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path, writer, recwarn):
    marker = tmp_path / "ran"
    path = tmp_path / "doctored.state"
    obj = {"state_dict": {"w": torch.zeros(2)}, "rng": Payload(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:                                  # a plain pickle (protocol 4), as pickle.dump writes it
        path.write_bytes(pickle.dumps(obj, protocol=4))
    message = user_error(load_checkpoint, str(path))
    assert not marker.exists()
    assert message.startswith(("refusing to load " + str(path), str(path) + " is not a readable"))
    if writer == "torch":                  # the named global gives it away
        assert "could run code" in message
    assert [str(w.message) for w in recwarn] == []       # nothing more for the user to read


def test_a_tensor_of_another_dtype_is_refused_before_loading(tmp_path, cfg, trained):
    first = next(k for k, v in trained["state_dict"].items() if v.is_floating_point())
    doctored = dict(trained, state_dict={**trained["state_dict"],
                                         first: trained["state_dict"][first].double()})
    path = save(tmp_path, doctored)
    message = user_error(load_weights, factory.get_model(cfg), path, cfg)
    assert "1 of another dtype" in message and first in message


def test_load_fitting_names_the_first_difference_and_leaves_the_model(tmp_path):
    from utils.checkpoint import load_fitting
    model = torch.nn.Linear(2, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [({"weight": torch.zeros(3, 2)}, "it lacks the tensor bias"),
             ({"weight": torch.zeros(2, 2), "bias": torch.zeros(3)},
              "its tensor weight has shape [2, 2], the model's [3, 2]"),
             ({"weight": torch.zeros(3, 2), "bias": torch.zeros(3, dtype=torch.int64)},
              "its tensor bias is torch.int64, the model's torch.float32"),
             ({"weight": torch.zeros(3, 2), "bias": torch.zeros(3), "extra": torch.zeros(1)},
              "it holds a tensor the model lacks (extra)")]
    for weights, needle in cases:
        message = user_error(load_fitting, model, {"state_dict": weights}, "x.state")
        assert message.startswith("x.state does not fit the model") and needle in message, message
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    load_fitting(model, {"state_dict": {"weight": torch.ones(3, 2), "bias": torch.ones(3)}}, "y")
    assert torch.equal(model.weight, torch.ones(3, 2))


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path, cfg, trained):
    path = save(tmp_path, dict(trained, config=[1, 2]))
    message = user_error(load_weights, factory.get_model(cfg), path, cfg)
    assert message.startswith(f"{path} has a 'config' that is not a mapping"), message
