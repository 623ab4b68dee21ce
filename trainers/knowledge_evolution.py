"""The generation loop of Knowledge Evolution (SPEC §2).

Each generation trains a fresh dense model; from generation 1 on it starts from the previous
generation's last-epoch weights with the reset hypothesis re-drawn. After each generation the
dense model is tested, its slim network is extracted and tested, and old checkpoints are pruned.
"""
import json
import logging
import os
import random
import shutil

import numpy as np
import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

import data
from trainers.engine import evaluate, train_one_epoch
from utils import net_utils
from utils.checkpoint import atomic_save, load_checkpoint
from utils.csv_utils import append_result
from utils.errors import UserError
from utils.model_profile import count_flops, count_parameters, format_generation_table
from utils.optim import build_optimizer
from utils.schedulers import build_scheduler

log = logging.getLogger("ke")

KEEP_LAST_GENERATIONS = 4


def select_device(cfg) -> torch.device:
    if not torch.cuda.is_available():
        if cfg.gpu is not None:
            log.warning(f"--gpu {cfg.gpu} given but CUDA is not available: training on the CPU")
        return torch.device("cpu")
    index = cfg.gpu or 0
    if index >= torch.cuda.device_count():
        raise UserError(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) "
                        f"visible; use an index below {torch.cuda.device_count()}")
    return torch.device("cuda", index)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Experiment:
    """Paths and writers of one experiment folder, `<log_dir>/<name>/`."""

    def __init__(self, cfg):
        self.dir = os.path.join(cfg.log_dir, cfg.name)
        self.csv = os.path.join(self.dir, f"{cfg.name}.csv")

    def generation_dir(self, g: int) -> str:
        return os.path.join(self.dir, f"gen_{g}")

    def checkpoint_dir(self, g: int) -> str:
        return os.path.join(self.generation_dir(g), "checkpoints")

    def last_checkpoint(self, g: int, epochs: int) -> str:
        return os.path.join(self.checkpoint_dir(g), f"epoch_{epochs - 1}.state")


def setup_experiment(cfg) -> Experiment:
    exp = Experiment(cfg)
    if os.path.exists(exp.csv):
        raise UserError(f"experiment folder {exp.dir} already holds results; choose another "
                        "--name or remove that folder to start over")
    os.makedirs(exp.dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(exp.dir, cfg.log_file))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    settings = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                for k, v in vars(cfg).items()}
    with open(os.path.join(exp.dir, "settings.json"), "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
    return exp


def checkpoint(cfg, model, optimizer, generation, epoch, best, current) -> dict:
    return {"epoch": epoch, "generation": generation, "arch": cfg.arch,
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "best_acc1": best["top1"], "best_acc5": best["top5"],
            "curr_acc1": current["top1"], "curr_acc5": current["top5"], "config": vars(cfg).copy()}


def build_generation_model(cfg, exp: Experiment, generation: int, device) -> nn.Module:
    """The dense model a generation starts from."""
    model = net_utils.get_model(cfg)
    if generation > 0:
        previous = load_checkpoint(exp.last_checkpoint(generation - 1, cfg.epochs))
        model.load_state_dict(previous["state_dict"])
        net_utils.split_reinitialize(cfg, model)
    elif cfg.pretrained:
        model.load_state_dict(load_checkpoint(cfg.pretrained)["state_dict"])
    return model.to(device)


def train_generation(cfg, exp, generation, model, loaders, criterion, device, num_classes) -> dict:
    """Train E epochs; return the last validation metrics, the best ones and the best train top-1/5."""
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    ckpt_dir = exp.checkpoint_dir(generation)
    writer = SummaryWriter(os.path.join(exp.generation_dir(generation), "logs"))
    best = {"top1": 0.0, "top5": 0.0}
    best_train = {"top1": 0.0, "top5": 0.0}
    current = {"top1": 0.0, "top5": 0.0}
    for epoch in range(cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, loaders["train"], criterion, optimizer, device, num_classes,
                                f"gen {generation} epoch {epoch}", cfg.print_freq)
        scheduler.step()
        best_train = {k: max(best_train[k], stats[k]) for k in best_train}
        for key in ("loss", "top1", "top5"):
            writer.add_scalar(f"train/{key}", stats[key], epoch)
        writer.add_scalar("lr", lr, epoch)
        writer.add_scalar("epoch_time", stats["time"], epoch)
        line = (f"gen {generation} epoch {epoch + 1}/{cfg.epochs} lr {lr:.5f} | train loss "
                f"{stats['loss']:.4f} top1 {stats['top1']:.2f}")
        last = epoch == cfg.epochs - 1
        if (epoch + 1) % cfg.test_interval == 0 or last:
            current = evaluate(model, loaders["val"], criterion, device, num_classes, "val")
            for key in ("loss", "top1", "top5"):
                writer.add_scalar(f"val/{key}", current[key], epoch)
            improved = current["top1"] > best["top1"] or best["top1"] == 0.0
            if improved:
                best = {"top1": current["top1"], "top5": current["top5"]}
                atomic_save(checkpoint(cfg, model, optimizer, generation, epoch, best, current),
                            os.path.join(ckpt_dir, "model_best.pth"))
            line += f" | val top1 {current['top1']:.2f} top5 {current['top5']:.2f} (best {best['top1']:.2f})"
        log.info(line + f" | {stats['time']:.1f}s")
        if last or (cfg.save_every > 0 and (epoch + 1) % cfg.save_every == 0):
            atomic_save(checkpoint(cfg, model, optimizer, generation, epoch, best, current),
                        os.path.join(ckpt_dir, f"epoch_{epoch}.state"))
    writer.close()
    return {"current": current, "best": best, "best_train": best_train}


def test_row(metrics) -> dict:
    return {"Current Tst Top 1": metrics["top1"], "Current Tst Top 5": metrics["top5"]}


def prune_checkpoints(exp: Experiment, generation: int):
    """Keep generation 0 and the last KEEP_LAST_GENERATIONS generations' checkpoints."""
    old = generation - KEEP_LAST_GENERATIONS
    if old > 0 and os.path.isdir(exp.checkpoint_dir(old)):
        shutil.rmtree(exp.checkpoint_dir(old))
        log.info(f"removed the checkpoints of generation {old}")


def run(cfg):
    """Run all generations of `cfg`; returns the generation table rows."""
    exp = setup_experiment(cfg)
    device = select_device(cfg)
    log.info(f"experiment {exp.dir} on {device}")
    splits = data.get_data(cfg)
    num_classes = splits.num_classes
    cfg.num_cls = num_classes
    loaders = {"val": data.make_loader(splits.val, cfg, train=False)}
    test_loader = data.make_loader(splits.test, cfg, train=False) if splits.test is not None else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    summary = SummaryWriter(os.path.join(exp.dir, "logs"))

    probe = net_utils.get_model(cfg)
    dense_gflops = count_flops(probe, cfg.image_size) / 1e9
    dense_params = count_parameters(probe)
    has_slim = cfg.num_generations > 1 and cfg.split_mode == "kels"
    slim_gflops = slim_params = None
    if has_slim:
        slim_model = net_utils.get_model(cfg, slim=True)
        slim_gflops = count_flops(slim_model, cfg.image_size) / 1e9
        slim_params = count_parameters(slim_model)
    log.info(f"dense model: {dense_params:,} parameters, {dense_gflops:.3f} GFLOPs at "
             f"{cfg.image_size}px, {net_utils.count_fit_weights(probe):,} fit weights")
    if has_slim:
        log.info(f"slim model: {slim_params:,} parameters, {slim_gflops:.3f} GFLOPs")

    table = []
    for generation in range(cfg.num_generations):
        seed = cfg.seed + generation if cfg.seed is not None else None
        if seed is not None:
            seed_everything(seed)
        shuffle = torch.Generator().manual_seed(seed) if seed is not None else None
        loaders["train"] = data.make_loader(splits.train, cfg, train=True, generator=shuffle)
        model = build_generation_model(cfg, exp, generation, device)
        atomic_save({"generation": generation, "arch": cfg.arch, "state_dict": model.state_dict()},
                    os.path.join(exp.checkpoint_dir(generation), "initial.state"))
        result = train_generation(cfg, exp, generation, model, loaders, criterion, device, num_classes)

        dense_test = best_test = {"top1": 0.0, "top5": 0.0}
        if test_loader is not None:
            dense_test = evaluate(model, test_loader, criterion, device, num_classes, "test")
            best_model = net_utils.get_model(cfg).to(device)
            best_model.load_state_dict(load_checkpoint(
                os.path.join(exp.checkpoint_dir(generation), "model_best.pth"))["state_dict"])
            best_test = evaluate(best_model, test_loader, criterion, device, num_classes, "test")
        append_result(exp.csv, {
            "Name": cfg.name, "Split Rate": cfg.split_rate, "Bias Split Rate": cfg.bias_split_rate,
            "Current Val Top 1": result["current"]["top1"], "Current Val Top 5": result["current"]["top5"],
            "Best Val Top 1": result["best"]["top1"], "Best Val Top 5": result["best"]["top5"],
            **test_row(dense_test),
            "Best Tst Top 1": best_test["top1"], "Best Tst Top 5": best_test["top5"],
            "Best Trn Top 1": result["best_train"]["top1"], "Best Trn Top 5": result["best_train"]["top5"],
            "Generation": generation,
        })
        summary.add_scalar("test/dense_top1", dense_test["top1"], generation)
        log.info(f"generation {generation}: dense test top1 {dense_test['top1']:.2f} "
                 f"top5 {dense_test['top5']:.2f}")
        row = {"generation": generation, "dense_top1": dense_test["top1"], "slim_top1": None,
               "dense_gflops": dense_gflops, "slim_gflops": slim_gflops, "params": dense_params,
               "slim_params": slim_params}
        if cfg.num_generations == 1:
            table.append(row)
            break
        if has_slim:
            slim = net_utils.extract_slim(net_utils.get_model(cfg, slim=True).to(device), model)
            slim_test = {"top1": 0.0, "top5": 0.0}
            if test_loader is not None:
                slim_test = evaluate(slim, test_loader, criterion, device, num_classes, "slim test")
            append_result(exp.csv, {"Name": cfg.name, "Split Rate": "slim", "Bias Split Rate": "slim",
                                    **test_row(slim_test), "Generation": generation})
            summary.add_scalar("test/slim_top1", slim_test["top1"], generation)
            log.info(f"generation {generation}: slim test top1 {slim_test['top1']:.2f} "
                     f"top5 {slim_test['top5']:.2f}")
            row["slim_top1"] = slim_test["top1"]
        table.append(row)
        prune_checkpoints(exp, generation)
    summary.close()
    log.info("\n" + format_generation_table(table))
    log.info(f"results: {exp.csv}")
    return table
