"""Checkpoint files: written atomically, read with clear errors."""
import os
import tempfile

import torch

from utils.errors import UserError

CHECKPOINT_KEYS = ("epoch", "generation", "arch", "state_dict", "optimizer", "best_acc1",
                   "best_acc5", "curr_acc1", "curr_acc5", "config")


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, then os.replace: a kill mid-write leaves
    the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by this toolkit, or a bare state_dict; UserError otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; give the path of a .state or .pth file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}); "
                        "give a file saved by train_KE_cls.py") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise UserError(f"{path} holds no model weights (no 'state_dict'); give a file saved by "
                    "train_KE_cls.py")


def load_weights(model, path, cfg):
    """Load the weights of checkpoint `path` into `model`, or say clearly why they do not fit."""
    ckpt = load_checkpoint(path)
    arch = ckpt.get("arch")
    if arch is not None and arch != cfg.arch:
        raise UserError(f"{path} holds a {arch} model, not --arch {cfg.arch}; pass --arch {arch} "
                        "or another checkpoint")
    saved_rate = (ckpt.get("config") or {}).get("split_rate")
    if saved_rate is not None and saved_rate != cfg.split_rate and "mask" in str(list(ckpt["state_dict"])):
        raise UserError(f"{path} was trained with --split_rate {saved_rate}, not {cfg.split_rate}; "
                        f"pass --split_rate {saved_rate} or another checkpoint")
    expected = model.state_dict()
    given = ckpt["state_dict"]
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
    model.load_state_dict(given)
    return ckpt
