"""The two commands that use a trained checkpoint without training: --evaluate and --export_slim."""
import argparse
import os

import torch
import torch.nn as nn

import data
from trainers.engine import evaluate
from utils import net_utils
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.export import export_slim
from utils.net_utils import load_exported

# what still comes from the command line when a checkpoint brings its own configuration
DATA_FLAGS = ("data", "set", "num_threads", "batch_size", "gpu", "image_size")


def _checkpoint_config(cfg, ckpt: dict) -> argparse.Namespace:
    """The configuration a checkpoint was trained with; data flags given on the command line win."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict) or "arch" not in saved:
        raise UserError("the checkpoint carries no training configuration; give a file saved by "
                        "train_KE_cls.py (epoch_*.state, model_best.pth, resume.state)")
    merged = dict(saved)
    for flag in DATA_FLAGS:
        if flag in cfg.given_flags:
            merged[flag] = getattr(cfg, flag)
    return argparse.Namespace(**merged)


def _device(cfg) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", cfg.gpu or 0)
    return torch.device("cpu")


def evaluate_checkpoint(cfg) -> dict:
    """--evaluate CKPT: top-1/top-5 of a checkpoint on the validation and test splits.

    CKPT is a training checkpoint (its dense model) or a slim network written by --export_slim.
    """
    path = cfg.evaluate
    if path.endswith(".pt2"):
        model = load_exported(path)
        if "image_size" not in cfg.given_flags:
            cfg.image_size = model.metadata["image_size"]
        device, kind = torch.device("cpu"), "exported slim network"
    else:
        ckpt = load_checkpoint(path)
        cfg = _checkpoint_config(cfg, ckpt)
        model = net_utils.get_model(cfg)
        model.load_state_dict(ckpt["state_dict"])
        device = _device(cfg)
        model = model.to(device)
        kind = f"dense model of generation {ckpt.get('generation')}, epoch {ckpt.get('epoch')}"
    splits = data.get_data(cfg)
    print(f"{path}: {kind}")
    results = {}
    for split, dataset in (("val", splits.val), ("test", splits.test)):
        if dataset is None or (split == "val" and splits.val_is_test):
            continue
        r = evaluate(model, data.make_loader(dataset, cfg, train=False), nn.CrossEntropyLoss(),
                     device, splits.num_classes, split)
        results[split] = r
        print(f"{split}: top-1 {r['top1']:.2f} top-5 {r['top5']:.2f} ({r['count']} images)")
    return results


def export_checkpoint(cfg) -> dict:
    """--export_slim CKPT OUT: write the slim network of a KELS checkpoint as a standalone file."""
    path, out = cfg.export_slim
    ckpt = load_checkpoint(path)
    cfg = _checkpoint_config(cfg, ckpt)
    if cfg.split_mode != "kels":
        raise UserError(f"{path} was trained with --split_mode {cfg.split_mode}; only KELS models "
                        "have a slim network")
    if os.path.exists(out):
        raise UserError(f"{out} already exists; choose another output path or remove it")
    model = net_utils.get_model(cfg)
    model.load_state_dict(ckpt["state_dict"])
    metadata = export_slim(model, cfg, out, class_names=ckpt.get("classes"),
                           extra={"generation": ckpt.get("generation"), "source": os.path.abspath(path)})
    print(f"wrote {out}: {metadata['arch']} slim network, width x{metadata['split_rate']}, "
          f"{metadata['num_classes']} classes, {metadata['image_size']}px inputs")
    return metadata
