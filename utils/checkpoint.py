"""Checkpoint files: written atomically, read with clear errors and without running code.

Every file is read with `torch.load(weights_only=True)`: tensors, numbers, strings and
containers only, so a doctored file cannot execute anything. Checkpoints written here hold
nothing else (random-generator states are stored as plain lists and tensors).
"""
import errno
import json
import logging
import os
import pickle
import re
import shutil
import warnings

import torch

from errors import UserError
from utils.safe_files import open_no_follow, open_regular, refuse_link, replaced_when_written

log = logging.getLogger("ke")

# errors that a user fixes by making room or fixing permissions, not by changing the code
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EIO)


def _save(obj, f):
    """torch.save to the open file `f`. A failed write of the file reaches torch's writer as a
    RuntimeError ("unexpected pos ..."); the OSError behind it is raised instead, so that a
    full disk is reported as one."""
    try:
        torch.save(obj, f)
    except RuntimeError as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, OSError):
            raise cause from None
        raise


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, then os.replace: a kill mid-write leaves
    the previous file intact."""
    with replaced_when_written(path) as tmp, open_no_follow(tmp, "wb") as f:
        _save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _copy(source, target):
    with open(source, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as f, \
            open_no_follow(target, "xb") as out:
        shutil.copyfileobj(f, out)


def atomic_link(source, path):
    """Give the finished file `source` a second name, `path` (replaced atomically), so that a
    checkpoint written under several names takes the disk once. Where the file system has no
    hard links, `path` is a copy. A later atomic_save to either name leaves the other intact.
    Neither name may be a symbolic link."""
    refuse_link(source)
    with replaced_when_written(path) as tmp:
        os.remove(tmp)                          # os.link makes the name itself
        try:
            os.link(source, tmp)             # source was checked: not a link
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            _copy(source, tmp)


def atomic_write_json(path: str, obj):
    """Write `obj` as indented JSON to `path` through a temporary file and a rename."""
    with replaced_when_written(path) as tmp, open_no_follow(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by this toolkit, or a bare state_dict; UserError otherwise."""
    try:
        opened = open_regular(path)          # a FIFO or a device is refused, never waited on
    except OSError:
        raise UserError(f"checkpoint {path} does not exist; give the path of a .state or .pth "
                        "file") from None
    try:
        with opened, warnings.catch_warnings():   # "Detected pickle protocol 4": not for the user
            warnings.simplefilter("ignore")
            obj = torch.load(opened, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):       # no Python object named: damaged, not doctored
            raise UserError(f"{path} is not a readable PyTorch checkpoint (UnpicklingError); "
                            "give a file saved by train_KE_cls.py") from None
        raise UserError(f"refusing to load {path}: it holds Python objects besides tensors and "
                        "plain values, and unpickling them could run code; give a checkpoint "
                        "written by train_KE_cls.py or a bare state_dict") from None
    except Exception as error:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}); "
                        "give a file saved by train_KE_cls.py") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        weights = obj["state_dict"]
        if not (isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())):
            raise UserError(f"{path} has a 'state_dict' that is not a mapping of names to "
                            "tensors; give a file saved by train_KE_cls.py")
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise UserError(f"{path} holds no model weights (no 'state_dict'); give a file saved by "
                    "train_KE_cls.py")


def first_misfit(expected: dict, loaded: dict):
    """How the tensors `loaded` fail to fit a model whose state_dict is `expected`, named by the
    first difference (a missing, an unexpected or a reshaped tensor, or another dtype); None
    when they fit."""
    for key, tensor in expected.items():
        if key not in loaded:
            return f"it lacks the tensor {key}"
        if loaded[key].shape != tensor.shape:
            return (f"its tensor {key} has shape {list(loaded[key].shape)}, the model's "
                    f"{list(tensor.shape)}")
        if loaded[key].dtype != tensor.dtype:
            return f"its tensor {key} is {loaded[key].dtype}, the model's {tensor.dtype}"
    extra = next((key for key in loaded if key not in expected), None)
    return None if extra is None else f"it holds a tensor the model lacks ({extra})"


def fitting_state_dict(model, ckpt: dict, path: str) -> dict:
    """`ckpt`'s state_dict (read from `path`) once every tensor is checked to fit `model`, so
    that a doctored or foreign file is one line rather than load_state_dict's error."""
    misfit = first_misfit(model.state_dict(), ckpt["state_dict"])
    if misfit:
        raise UserError(f"{path} does not fit the model it is loaded into: {misfit}; give a "
                        "checkpoint of this model")
    return ckpt["state_dict"]


def check_finite(path: str, tensors: dict, what: str = "weights"):
    """UserError naming the tensors of `tensors` ({name: tensor}) that hold NaN or infinity:
    a model with them gives meaningless outputs (a diverged run's checkpoint)."""
    bad = [name for name, t in tensors.items() if isinstance(t, torch.Tensor)
           and (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if bad:
        from errors import short
        raise UserError(f"{path}: {len(bad)} {what} tensor(s) hold NaN or infinite values "
                        f"({short(bad)}); the run diverged before it was saved: give an earlier "
                        "checkpoint of it")


def load_fitting(model, ckpt: dict, path: str):
    """`model` with `ckpt`'s weights loaded, after `fitting_state_dict`'s check."""
    model.load_state_dict(fitting_state_dict(model, ckpt, path))
    return model


_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))"
                               r"\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def _from_foreign_state_dict(loaded: dict, expected: dict):
    """Adapt a bare state_dict (e.g. torchvision's ImageNet weights) to our model.

    Old torchvision DenseNet keys (`denselayer1.norm.1.weight`) are renamed, a classifier of
    another class count is skipped, and the masks (which such files lack) are kept from the
    model. Returns (state_dict to load, names of the skipped classifier tensors)."""
    loaded = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in loaded.items()}
    skipped = [k for k in loaded if k.startswith(CLASSIFIER_PREFIXES) and k in expected
               and loaded[k].shape != expected[k].shape]
    adapted = {k: v for k, v in loaded.items() if k not in skipped}
    for key, value in expected.items():
        if key not in adapted and (key.endswith(".mask") or key in skipped):
            adapted[key] = value
    return adapted, skipped


def load_weights(model, path, cfg, report: bool = True):
    """Load the weights of checkpoint `path` into `model`, or say clearly why they do not fit.

    `path` is a checkpoint of this toolkit or a bare state_dict such as torchvision's ImageNet
    weights for the ResNets and DenseNets (then the classifier is skipped when its class count
    differs, and, with `report`, that is logged)."""
    ckpt = load_checkpoint(path)
    arch = ckpt.get("arch")
    if arch is not None and arch != cfg.arch:
        raise UserError(f"{path} holds a {arch} model, not --arch {cfg.arch}; pass --arch {arch} "
                        "or another checkpoint")
    config = ckpt.get("config")
    if config is not None and not isinstance(config, dict):
        raise UserError(f"{path} has a 'config' that is not a mapping of settings; give a file "
                        "saved by train_KE_cls.py or a bare state_dict")
    saved_rate = (config or {}).get("split_rate")
    has_masks = any(k.endswith(".mask") for k in ckpt["state_dict"])
    if saved_rate is not None and saved_rate != cfg.split_rate and has_masks:
        raise UserError(f"{path} was trained with --split_rate {saved_rate}, not {cfg.split_rate}; "
                        f"pass --split_rate {saved_rate} or another checkpoint")
    expected = model.state_dict()
    loaded = ckpt["state_dict"]
    skipped = []
    if "arch" not in ckpt:
        loaded, skipped = _from_foreign_state_dict(loaded, expected)
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    reshaped = [k for k in expected if k in loaded and loaded[k].shape != expected[k].shape]
    retyped = [k for k in expected if k in loaded and loaded[k].dtype != expected[k].dtype
               and "arch" in ckpt]             # a foreign file's float16 copies in exactly
    if missing or unexpected or reshaped or retyped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("of another shape", reshaped), ("of another dtype", retyped)):
            if keys:
                parts.append(f"{len(keys)} {label} (first: {keys[0]})")
        raise UserError(f"{path} does not fit --arch {cfg.arch} with --split_rate "
                        f"{cfg.split_rate}: tensors {', '.join(parts)}")
    if cfg.split_mode == "kels":   # KELS masks follow from the split rate
        remasked = [k for k in expected if k.endswith("mask")
                    and not torch.equal(loaded[k].to(expected[k].device, expected[k].dtype), expected[k])]
        if remasked:
            raise UserError(f"{path} holds split masks that differ from those of --split_rate "
                            f"{cfg.split_rate} ({len(remasked)} of them, first: {remasked[0]}); it "
                            f"was trained with another --split_rate or --split_mode: pass those "
                            f"or another checkpoint")
    model.load_state_dict(loaded)
    if skipped and report:
        log.info(f"loaded {path}; skipped its classifier ({', '.join(skipped)}: another class "
                 "count), which keeps its fresh initialisation")
    return ckpt
