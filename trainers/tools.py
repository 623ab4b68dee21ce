"""The two commands that use a trained model without training: --evaluate and --export_slim."""
import argparse
import os

import torch
import torch.nn as nn

from configs.base_config import given_over, settings_config
from configs.flag_kinds import EVALUATE_FROM_COMMAND_LINE
from data import loading
from data.formats import normalisation
from data.transforms import eval_resize
from errors import UserError
from methods import METHODS
from models import factory
from models.graph_split import slim_blockers
from trainers.engine import evaluate
from trainers.experiment import check_types, check_writable
from trainers.knowledge_evolution import select_device
from trainers.tasks import make_task
from utils import counting
from utils.checkpoint import check_finite, load_checkpoint, load_fitting
from utils.distributed import World
from utils.export import export_slim, load_exported, task_metadata


def _with_given(cfg, saved: dict) -> argparse.Namespace:
    """`saved` settings, with the data flags given on the command line taking precedence."""
    return given_over(saved, cfg, EVALUATE_FROM_COMMAND_LINE)




def _checkpoint_config(cfg, ckpt: dict, path: str) -> argparse.Namespace:
    """The configuration a checkpoint was trained with, checked by the flags' rules (a crafted
    `config` is one line, not a traceback); data flags given on the command line win."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict) or "arch" not in saved:
        raise UserError(f"{path} carries no training configuration; give a file saved by "
                        "train_KE_cls.py (epoch_*.state, model_best.pth, resume.state)")
    source = f"{path} (its config)"
    check_types(saved, source)
    try:
        checked = settings_config(saved, source)
    except ValueError as error:
        raise UserError(str(error)) from None
    num_cls = saved.get("num_cls")
    if isinstance(num_cls, bool) or not isinstance(num_cls, int) or num_cls < 1:
        raise UserError(f"{source}: num_cls = {num_cls!r} is not a class count; give a file "
                        "saved by train_KE_cls.py")
    if ckpt.get("arch", checked.arch) != checked.arch:
        raise UserError(f"{source}: arch = {checked.arch} but the checkpoint holds a "
                        f"{ckpt['arch']} model; give a file saved by train_KE_cls.py")
    return _with_given(cfg, vars(checked))


def _trained_model(run_cfg, ckpt: dict, path: str):
    """The dense model of `run_cfg` with the checkpoint's weights, checked before loading."""
    return load_fitting(factory.get_model(run_cfg), ckpt, path)


def _check_classes(path: str, model_classes, splits):
    """UserError unless the data's classes are the model's, in the same order."""
    if model_classes is None:
        return
    ours, theirs = [str(c) for c in model_classes], [str(c) for c in splits.classes]
    if ours != theirs:
        differ = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                      min(len(ours), len(theirs)))
        raise UserError(f"{path} was trained on {len(ours)} classes and this data has "
                        f"{len(theirs)} (first difference at index {differ}: "
                        f"{ours[differ] if differ < len(ours) else 'none'} vs "
                        f"{theirs[differ] if differ < len(theirs) else 'none'}); pass the "
                        f"model's dataset with --set and --data")


def _check_task(path: str, cfg, saved_task: str):
    """UserError unless the model was trained for the --task of the command line."""
    if cfg.task != saved_task:
        kind = "an embedding model (--task retrieval)" if saved_task == "retrieval" else \
            "a classifier (--task classification)"
        raise UserError(f"{path} is {kind}; evaluate it with --task {saved_task}")


def evaluate_checkpoint(cfg) -> dict:
    """--evaluate CKPT: top-1/top-5 of a model on the validation and test splits.

    CKPT is a training checkpoint (its dense model) or a slim network written by --export_slim;
    either carries the dataset it was trained on, used unless --set/--data are given.
    """
    path = cfg.evaluate
    if path.endswith(".pt2"):
        model = load_exported(path, cfg.max_image_pixels)
        meta = model.metadata
        saved = {**vars(cfg), "image_size": meta["image_size"]}
        saved.update({k: v for k, v in (meta.get("dataset") or {}).items() if k in ("set", "data")})
        if "image_size" in cfg.given_flags and cfg.image_size != meta["image_size"]:
            raise UserError(f"--image_size {cfg.image_size}: {path} takes {meta['image_size']}px "
                            f"inputs; drop the flag or pass --image_size {meta['image_size']}")
        run_cfg = _with_given(cfg, saved)
        device, kind, classes = torch.device("cpu"), "exported slim network", meta.get("class_names")
        _check_task(path, cfg, meta.get("task", "classification"))
        check_finite(path, dict(model.program.state_dict()))
    else:
        ckpt = load_checkpoint(path)
        run_cfg = _checkpoint_config(cfg, ckpt, path)
        _check_task(path, cfg, getattr(run_cfg, "task", "classification"))
        check_finite(path, ckpt["state_dict"])
        model = _trained_model(run_cfg, ckpt, path)
        device = select_device(run_cfg, World())
        model = model.to(device)
        kind = f"dense model of generation {ckpt.get('generation')}, epoch {ckpt.get('epoch')}"
        if isinstance(ckpt.get("generation"), int) and isinstance(ckpt.get("epoch"), int):
            kind = "dense model of " + counting.position(ckpt["generation"],
                                                         run_cfg.num_generations, ckpt["epoch"],
                                                         run_cfg.epochs)
        classes = ckpt.get("classes")
    splits = loading.get_data(run_cfg)
    _check_classes(path, classes, splits)
    print(f"{path}: {kind}")
    if factory.is_retrieval(run_cfg):
        return _evaluate_retrieval(model, run_cfg, splits, device)
    results = {}
    for split, dataset in (("val", splits.val), ("test", splits.test)):
        if dataset is None or (split == "val" and splits.val_is_test):
            continue
        loader = loading.make_loader(dataset, run_cfg.eval_batch_size, run_cfg.num_threads, train=False)
        r = evaluate(model, loader, nn.CrossEntropyLoss(), device, splits.num_classes, split)
        results[split] = r
        print(f"{split}: top-1 {r['top1']:.2f} top-5 {r['top5']:.2f} ({r['count']} images)")
    return results


def _evaluate_retrieval(model, run_cfg, splits, device) -> dict:
    """Recall@K and NMI of an embedding model over the test classes."""
    task = make_task(run_cfg, splits.num_classes, device, World())
    loader = loading.make_loader(splits.test, run_cfg.eval_batch_size, run_cfg.num_threads, train=False)
    r = task.evaluate(model, loader, None, "test", None, False)
    print(f"test classes: {task.describe(r)} ({r['count']} images)")
    return {"test": r}


def export_checkpoint(cfg) -> dict:
    """--export_slim CKPT OUT: write the slim network of a KELS checkpoint as a standalone file."""
    path, out = cfg.export_slim
    if os.path.exists(out):
        raise UserError(f"{out} already exists; choose another output path or remove it")
    check_writable(os.path.dirname(os.path.abspath(out)), "--export_slim output folder")
    ckpt = load_checkpoint(path)
    run_cfg = _checkpoint_config(cfg, ckpt, path)
    if run_cfg.split_mode != "kels":
        raise UserError(f"{path} was trained with --split_mode {run_cfg.split_mode}; only KELS "
                        "models have a slim network")
    reason = METHODS[run_cfg.forget].slim_reason
    if reason:
        raise UserError(f"{path} has no slim network to export: {reason}; export a checkpoint "
                        "of a --forget ke run")
    if slim_blockers(run_cfg.arch):
        raise UserError(f"{run_cfg.arch} has no exact slim network: {slim_blockers(run_cfg.arch)[0]}")
    check_finite(path, ckpt["state_dict"])
    model = _trained_model(run_cfg, ckpt, path)
    classes = ckpt.get("classes") or list(range(run_cfg.num_cls))
    mean, std = normalisation(run_cfg.set)
    metadata = export_slim(model, run_cfg, out, classes, mean, std, eval_resize(run_cfg.image_size),
                           extra={"generation": ckpt.get("generation"),
                                  "source": os.path.abspath(path), **task_metadata(run_cfg)})
    print(f"wrote {out}: {metadata['arch']} slim network, width x{metadata['split_rate']}, "
          f"{metadata['num_classes']} classes, {metadata['image_size']}px inputs")
    return metadata
