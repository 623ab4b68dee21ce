"""Checkpoint files: written atomically, read with clear errors and without running code.

Every file is read with `torch.load(weights_only=True)`: tensors, numbers, strings and
containers only, so a doctored file cannot execute anything. Checkpoints written here hold
nothing else (random-generator states are stored as plain lists and tensors).
"""
import contextlib
import errno
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings

import torch

from errors import UserError

log = logging.getLogger("ke")

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK   # what open() gives a new file; mkstemp's files start at 0600

TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".tmp-", ".part"
# errors that a user fixes by making room or fixing permissions, not by changing the code
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EIO)


@contextlib.contextmanager
def replaced_when_written(path, suffix: str = TEMPORARY_SUFFIX):
    """The name of a new, empty file beside `path` (mode FILE_MODE) for the block to write; when
    the block ends it is renamed over `path`. An error or a signal before then removes it and
    leaves `path` as it was (after kill -9 it stays, for remove_stale_temporaries)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX, suffix=suffix)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, then os.replace: a kill mid-write leaves
    the previous file intact."""
    with replaced_when_written(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_link(source, path):
    """Give the finished file `source` a second name, `path` (replaced atomically), so that a
    checkpoint written under several names takes the disk once. Where the file system has no
    hard links, `path` is a copy. A later atomic_save to either name leaves the other intact."""
    with replaced_when_written(path) as tmp:
        os.remove(tmp)                          # os.link makes the name itself
        try:
            os.link(source, tmp)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            shutil.copyfile(source, tmp)
            os.chmod(tmp, FILE_MODE)


def atomic_write_json(path: str, obj):
    """Write `obj` as indented JSON to `path` through a temporary file and a rename."""
    with replaced_when_written(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporary files that a kill during `atomic_save` left under `folder`; returns
    how many. Call it only while holding the experiment's lock (no other writer is active)."""
    removed = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX):
                os.remove(os.path.join(parent, name))
                removed += 1
    return removed


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by this toolkit, or a bare state_dict; UserError otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; give the path of a .state or .pth file")
    try:
        with warnings.catch_warnings():      # e.g. "Detected pickle protocol 4": not for the user
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
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


_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def _from_foreign_state_dict(given: dict, expected: dict):
    """Adapt a bare state_dict (e.g. torchvision's ImageNet weights) to our model.

    Old torchvision DenseNet keys (`denselayer1.norm.1.weight`) are renamed, a classifier of
    another class count is skipped, and the masks (which such files lack) are kept from the
    model. Returns (state_dict to load, names of the skipped classifier tensors)."""
    given = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in given.items()}
    skipped = [k for k in given if k.startswith(CLASSIFIER_PREFIXES) and k in expected
               and given[k].shape != expected[k].shape]
    adapted = {k: v for k, v in given.items() if k not in skipped}
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
    saved_rate = (ckpt.get("config") or {}).get("split_rate")
    has_masks = any(k.endswith(".mask") for k in ckpt["state_dict"])
    if saved_rate is not None and saved_rate != cfg.split_rate and has_masks:
        raise UserError(f"{path} was trained with --split_rate {saved_rate}, not {cfg.split_rate}; "
                        f"pass --split_rate {saved_rate} or another checkpoint")
    expected = model.state_dict()
    given = ckpt["state_dict"]
    skipped = []
    if "arch" not in ckpt:
        given, skipped = _from_foreign_state_dict(given, expected)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("of another shape", reshaped)):
            if keys:
                parts.append(f"{len(keys)} {label} (first: {keys[0]})")
        raise UserError(f"{path} does not fit --arch {cfg.arch} with --split_rate "
                        f"{cfg.split_rate}: tensors {', '.join(parts)}")
    if cfg.split_mode == "kels":   # KELS masks follow from the split rate
        remasked = [k for k in expected if k.endswith("mask")
                    and not torch.equal(given[k].to(expected[k].device, expected[k].dtype), expected[k])]
        if remasked:
            raise UserError(f"{path} holds split masks that differ from those of --split_rate "
                            f"{cfg.split_rate} ({len(remasked)} of them, first: {remasked[0]}); it "
                            f"was trained with another --split_rate or --split_mode: pass those "
                            f"or another checkpoint")
    model.load_state_dict(given)
    if skipped and report:
        log.info(f"loaded {path}; skipped its classifier ({', '.join(skipped)}: another class "
                 "count), which keeps its fresh initialisation")
    return ckpt
