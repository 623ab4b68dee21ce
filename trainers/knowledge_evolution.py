"""The generation loop of Knowledge Evolution, resumable at any point.

Each generation trains a fresh dense model; from generation 1 on it starts from the previous
generation's last-epoch weights with the reset hypothesis re-drawn. After each generation the
dense model is tested, its slim network is extracted and tested, and old checkpoints are pruned.

Progress lives on disk: the results CSV says which generations are finished, and
`gen_<g>/checkpoints/resume.state` holds the exact state (weights, optimizer, schedule, random
generators, position in the epoch) after the last completed epoch or interrupted batch.
"""
import datetime
import hashlib
import logging
import os
import random
import signal
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from data import loading
from utils.cs_kd import PairBatchSampler, cs_kd_forward
from data.samplers import EpochShuffleSampler, SeededSamples, ShardSampler
from trainers.engine import NonFiniteLoss, evaluate, train_one_epoch
from configs.base_config import resolve
from configs.base_config import warnings as config_warnings
from trainers.experiment import (EarlyRecords, Experiment, check_resumable, disk_errors, has_slim,
                                 no_slim_reason, open_experiment, settle_experiment,
                                 RESUME_LATEST)
from utils.performance import Precision, compiled, configure_backends, prepare_model
from utils import distributed, net_utils
from utils.distributed import World
from utils.checkpoint import atomic_link, atomic_save, load_checkpoint, load_fitting, load_weights
from utils.csv_utils import SLIM, append_result, read_results
from utils.errors import UserError
from utils.report import write_report
from utils.model_profile import count_flops, count_parameters, format_generation_table
from utils.optim import build_optimizer
from utils.schedulers import build_scheduler

log = logging.getLogger("ke")

KEEP_LAST_GENERATIONS = 4
NO_METRICS = {"top1": 0.0, "top5": 0.0}


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was saved."""

    def __init__(self, signal_number: int, where: str, command: str):
        super().__init__(f"stopped by {signal.Signals(signal_number).name} at {where}; "
                         f"a resumable checkpoint is saved. Resume with:\n  {command}")
        self.signal_number = signal_number


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the training loop checks after every batch."""

    def __init__(self):
        self.signal_number = None
        self._previous = {}

    def __enter__(self):
        self._pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        if self.signal_number is not None:
            return  # stopping: a further signal while the process winds down stops it at once
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signal_number, frame):
        if os.getpid() != self._pid:
            # a forked data-loading worker inherits this handler; a terminal's Ctrl-C reaches
            # it too. The main process decides when to stop and then shuts the workers down.
            return
        if self.signal_number is not None:
            # a second signal: stop at once. Not by raising: the exception could land anywhere,
            # and code such as logging's emit catches and prints it. Checkpoints are written
            # atomically, so the last complete one is intact.
            os.write(2, f"stopped at once by a second {signal.Signals(signal_number).name}; the "
                        f"work since the last saved checkpoint is lost; resume with the same "
                        f"command plus --resume\n".encode())
            os._exit(128 + signal_number)
        self.signal_number = signal_number
        log.warning(f"{signal.Signals(signal_number).name} received: finishing the current batch, "
                    "then saving a checkpoint (signal again to stop at once)")

    def __call__(self) -> bool:
        return self.signal_number is not None


def select_device(cfg, world: World) -> torch.device:
    if world.distributed and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
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


def rng_state() -> dict:
    """Every random generator's state as tensors and plain values (loadable with weights_only)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class NoWriter:
    """Stands in for SummaryWriter on the processes that do not write (ranks other than 0)."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def writer_for(world: World, exp: Experiment, folder: str, command: str, **kwargs):
    return exp.event_writer(folder, command, **kwargs) if world.is_main else NoWriter()


def weights_digest(model: nn.Module) -> str:
    """sha256 over every tensor of the state_dict, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def merge_epoch_stats(before: dict, after: dict) -> dict:
    """Train statistics of one epoch that ran in two parts (stopped part-way, then resumed)."""
    n = before["count"] + after["count"]
    merged = dict(after, count=n, time=before["time"] + after["time"])
    for key in ("loss", "top1", "top5"):
        merged[key] = (before[key] * before["count"] + after[key] * after["count"]) / n if n else 0.0
    return merged


class GenerationTrainer:
    """Trains one generation's dense model, checkpointing after every epoch."""

    def __init__(self, cfg, exp: Experiment, generation: int, device, splits, val_loader,
                 criterion, stop: StopRequest, world: World):
        self.cfg, self.exp, self.generation, self.device = cfg, exp, generation, device
        self.val_loader, self.criterion, self.stop, self.world = val_loader, criterion, stop, world
        self.num_classes, self.classes = splits.num_classes, list(splits.classes)
        self.precision = Precision(cfg.amp, device)  # a fresh gradient scaler each generation
        seed, batch_size = cfg.seed + generation, cfg.process_batch_size
        self.forward = None
        if cfg.cs_kd:
            self.sampler = PairBatchSampler(splits.train.targets, batch_size, seed,
                                            num_replicas=world.size, rank=world.rank,
                                            drop_last=False, drop_single=True,
                                            with_seeds=True)
            self.train_loader = loading.make_pair_loader(SeededSamples(splits.train), self.sampler,
                                                         num_workers=cfg.num_threads)
            self.forward = cs_kd_forward
        else:
            self.sampler = EpochShuffleSampler(len(splits.train), seed, num_replicas=world.size,
                                               rank=world.rank)
            self.train_loader = loading.make_loader(SeededSamples(splits.train), batch_size,
                                                 cfg.num_threads, train=True, sampler=self.sampler)
        self.best, self.current, self.best_train = dict(NO_METRICS), dict(NO_METRICS), dict(NO_METRICS)
        self.best_epoch = None
        self.next_epoch, self.next_batch = 0, 0
        self.partial_epoch = None

    def start_epoch(self, epoch: int, skip_batches: int):
        """Point the sampler at `epoch`, past its first `skip_batches` batches (resume)."""
        if self.cfg.cs_kd:
            self.sampler.set_epoch(epoch, start_batch=skip_batches)
        else:
            self.sampler.set_epoch(epoch, start=skip_batches * self.cfg.process_batch_size)

    def evolve(self):
        """Re-initialise what this generation forgets: the reset hypothesis (KE) or whole later
        layers (--reset_layer_name)."""
        cfg = self.cfg
        if cfg.reset_layer_name:
            reset = net_utils.reset_layers(self.model, cfg.reset_layer_name, cfg.reset_bn)
            log.info(f"generation {self.generation}: re-initialised {len(reset)} layers under "
                     f"{cfg.reset_layer_name}")
        else:
            net_utils.split_reinitialize(cfg, self.model)

    def start(self, state=None) -> nn.Module:
        """Build the model, optimizer and schedule: fresh, or from a resumable `state`."""
        cfg, g = self.cfg, self.generation
        seed_everything(cfg.seed + g)
        self.model = net_utils.get_model(cfg)
        if state is None and g > 0:
            path = self.exp.last_checkpoint(g - 1, cfg.epochs)
            load_fitting(self.model, load_checkpoint(path), path)
            self.evolve()
        elif state is None and cfg.pretrained:
            load_weights(self.model, cfg.pretrained, cfg)
            if not cfg.keep_pretrained_reset:   # as the reference: the fit part starts pretrained
                self.evolve()
        if state is not None:
            load_fitting(self.model, state, self.exp.resume_state(g))
        if cfg.sync_bn and self.world.distributed:
            self.model = net_utils.convert_sync_batchnorm(self.model)
        self.model = prepare_model(self.model, cfg, self.device)
        self.train_model = self.model
        if self.world.distributed:
            # masks never change during training: keep DDP from broadcasting them every step
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.model, [name for name, _ in self.model.named_buffers() if name.endswith("mask")])
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_model = compiled(self.train_model, cfg)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        if state is None:
            self.save({"generation": g, "arch": cfg.arch, "state_dict": self.model.state_dict(),
                       "config": vars(cfg).copy()},
                      os.path.join(self.exp.checkpoint_dir(g), "initial.state"))
            return self.model
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("scaler"))
        self.best = {"top1": state["best_acc1"], "top5": state["best_acc5"]}
        self.current = {"top1": state["curr_acc1"], "top5": state["curr_acc5"]}
        self.best_train = dict(state["best_train"])
        self.best_epoch = state["best_epoch"]
        self.partial_epoch = state.get("partial_epoch")
        if state["batch"] is None:
            self.next_epoch, self.next_batch = state["epoch"] + 1, 0
        else:
            self.next_epoch, self.next_batch = state["epoch"], state["batch"]
        set_rng_state(state["rng"])
        log.info(f"resuming generation {g} at epoch {self.next_epoch + 1}"
                 + (f", batch {self.next_batch + 1}" if self.next_batch else ""))
        return self.model

    def save(self, obj, path, *more_paths):
        """Write `obj` to `path` on rank 0; `more_paths` become other names of that one file."""
        if not self.world.is_main:
            return
        command = self.exp.resume_command(self.cfg)
        with disk_errors(path, command):
            atomic_save(obj, self.exp.writable(path))
        for other in more_paths:
            with disk_errors(other, command):
                atomic_link(path, self.exp.writable(other))

    def state(self, epoch: int, batch=None, partial_epoch=None) -> dict:
        """A checkpoint (the reference's keys) that also carries what exact continuation needs
        (`partial_epoch`: the train statistics of the batches done when stopped mid-epoch)."""
        return {"epoch": epoch, "batch": batch, "generation": self.generation, "arch": self.cfg.arch,
                "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(),
                "best_acc1": self.best["top1"], "best_acc5": self.best["top5"],
                "curr_acc1": self.current["top1"], "curr_acc5": self.current["top5"],
                "best_train": dict(self.best_train), "best_epoch": self.best_epoch,
                "rng": rng_state(), "config": vars(self.cfg).copy(), "partial_epoch": partial_epoch,
                "classes": self.classes}

    def train(self):
        cfg, g = self.cfg, self.generation
        ckpt_dir = self.exp.checkpoint_dir(g)
        writer = writer_for(self.world, self.exp, os.path.join(self.exp.generation_dir(g), "logs"),
                            self.exp.resume_command(cfg), purge_step=self.next_epoch)
        started, epochs_run = time.perf_counter(), 0
        for epoch in range(self.next_epoch, cfg.epochs):
            skip = self.next_batch if epoch == self.next_epoch else 0
            self.start_epoch(epoch, skip)
            lr = self.optimizer.param_groups[0]["lr"]
            try:
                stats = train_one_epoch(self.train_model, self.train_loader, self.criterion,
                                        self.optimizer, self.device, self.num_classes,
                                        f"gen {g} epoch {epoch}", cfg.print_freq, self.stop,
                                        precision=self.precision, channels_last=cfg.channels_last,
                                        forward=self.forward)
            except NonFiniteLoss as error:
                raise UserError(f"non-finite loss at generation {g}, epoch {epoch}, batch "
                                f"{skip + error.batch}; the last good checkpoint is kept in "
                                f"{ckpt_dir}; lower --lr or use --amp none") from None
            if epoch == self.next_epoch and self.partial_epoch:
                stats = merge_epoch_stats(self.partial_epoch, stats)   # stopped and resumed here
                self.partial_epoch = None
            if stats["stopped_after"] is not None:
                partial = {k: stats[k] for k in ("loss", "top1", "top5", "count", "time")}
                self.save(self.state(epoch, skip + stats["stopped_after"], partial),
                          self.exp.resume_state(g))
                distributed.barrier()
                writer.close()
                raise Interrupted(self.stop.signal_number,
                                  f"generation {g}, epoch {epoch}, batch {skip + stats['stopped_after']}",
                                  self.exp.resume_command(cfg))
            distributed.broadcast_buffers(self.model)
            self.scheduler.step()
            self.best_train = {k: max(self.best_train[k], stats[k]) for k in self.best_train}
            for key in ("loss", "top1", "top5"):
                writer.add_scalar(f"train/{key}", stats[key], epoch)
            writer.add_scalar("lr", lr, epoch)
            writer.add_scalar("epoch_time", stats["time"], epoch)
            line = (f"generation {g + 1}/{cfg.num_generations}, epoch {epoch + 1}/{cfg.epochs}, "
                    f"lr {lr:.5f} | train loss {stats['loss']:.4f} top1 {stats['top1']:.2f}")
            last, paths = epoch == cfg.epochs - 1, []
            if (epoch + 1) % cfg.test_interval == 0 or last:
                self.current = evaluate(self.model, self.val_loader, self.criterion,
                                        self.device, self.num_classes, "val",
                                        precision=self.precision, channels_last=cfg.channels_last)
                for key in ("loss", "top1", "top5"):
                    writer.add_scalar(f"val/{key}", self.current[key], epoch)
                if self.best_epoch is None or self.current["top1"] > self.best["top1"]:
                    self.best = {"top1": self.current["top1"], "top5": self.current["top5"]}
                    self.best_epoch = epoch
                    paths.append(os.path.join(ckpt_dir, "model_best.pth"))
                line += (f" | val top1 {self.current['top1']:.2f} top5 {self.current['top5']:.2f}"
                         f" (best {self.best['top1']:.2f})")
            epochs_run += 1
            eta = time_left((time.perf_counter() - started) / epochs_run, g, epoch, cfg)
            log.info(line + f" | {stats['time']:.1f}s, eta {datetime.timedelta(seconds=round(eta))}")
            if last or (cfg.save_every > 0 and (epoch + 1) % cfg.save_every == 0):
                paths.append(os.path.join(ckpt_dir, f"epoch_{epoch}.state"))
            # one file under every name this epoch's state goes by (best, epoch, resume)
            self.save(self.state(epoch) if self.world.is_main else None, *paths,
                      self.exp.resume_state(g))
        writer.close()
        distributed.barrier()  # every checkpoint is on disk before any rank reads one


def time_left(seconds_per_epoch: float, generation: int, epoch: int, cfg) -> float:
    """Seconds the epochs after `epoch` of `generation` take, this one's and the later
    generations', at `seconds_per_epoch`."""
    epochs_left = (cfg.epochs - epoch - 1) + (cfg.num_generations - generation - 1) * cfg.epochs
    return seconds_per_epoch * epochs_left


def prune_checkpoints(exp: Experiment, generation: int, keep: str = "reference"):
    """After `generation` is finished: keep the checkpoints of generation 0 and of the last
    KEEP_LAST_GENERATIONS generations (`reference`), or only `generation`'s (`last`: all that
    --resume needs)."""
    first = 0 if keep == "last" else 1
    last = generation - 1 if keep == "last" else generation - KEEP_LAST_GENERATIONS
    for old in range(first, last + 1):
        folder = exp.checkpoint_dir(old)
        if os.path.isdir(folder):
            exp.folder(folder)          # refuses a linked folder: its files are not the run's
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
            os.rmdir(folder)
            log.info(f"removed the checkpoints of generation {old}")


def generation_table(cfg, exp: Experiment, profile: dict) -> list:
    """Rows of the final table, read back from the results CSV."""
    table = {}
    for row in read_results(exp.csv):
        g = int(row["Generation"])
        entry = table.setdefault(g, {"generation": g, "dense_top1": None, "slim_top1": None, **profile})
        key = "slim_top1" if row["Split Rate"] == SLIM else "dense_top1"
        entry[key] = row["Current Tst Top 1"]
    return [table[g] for g in sorted(table)]


class KnowledgeEvolution:
    """The whole experiment: `prepare` checks everything and opens the folder, `run` trains."""

    def __init__(self, cfg, exp: Experiment, stop: StopRequest, world: World, new: bool, seed: int):
        self.given, self.exp, self.stop, self.world = cfg, exp, stop, world
        self.new, self.seed = new, seed
        self.device = select_device(cfg, world)
        configure_backends(self.device)
        self.precision = Precision(cfg.amp, self.device)  # evaluation: autocast only
        self.session = None

    def prepare(self, early=None):
        """Read the data, resolve the configuration and build the model once, so that bad input
        stops the run before anything is written; then create or reopen the experiment folder."""
        given = self.given
        self.splits = loading.get_data(given)
        try:
            self.cfg = resolve(given, self.splits.num_classes, self.world.size, self.seed)
        except ValueError as error:
            raise UserError(str(error)) from None
        cfg = self.cfg
        if len(self.splits.train) < 2 * self.world.size:
            raise UserError(f"the training split has {len(self.splits.train)} image(s); each "
                            f"process needs at least 2 for BatchNorm: add training images")
        if not self.new:
            check_resumable(cfg, given, self.exp)
        elif cfg.pretrained:        # a file that does not fit (or is refused) stops us here
            quiet = logging.getLogger("ke")
            level = quiet.level
            quiet.setLevel(logging.WARNING)     # what it loads is logged when generation 0 starts
            try:
                load_weights(net_utils.get_model(cfg), cfg.pretrained, cfg)
            finally:
                quiet.setLevel(level)
        self.has_slim = has_slim(cfg)
        self.profile = self._profile()
        self.session = on_main(self.world, lambda: settle_experiment(
            cfg, self.exp, self.new, early.take() if early else ()))
        log.info(f"experiment {self.exp.dir} on {self.device}, seed {cfg.seed}")
        if not self.has_slim:
            log.info(f"no slim rows: {no_slim_reason(cfg)}")
        for warning in config_warnings(cfg):
            log.warning(warning)
        self.val_loader = self.eval_loader(self.splits.val)
        self.test_loader = self.eval_loader(self.splits.test) if self.splits.test is not None else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def eval_loader(self, dataset):
        sampler = ShardSampler(len(dataset), self.world.size, self.world.rank)
        return loading.make_loader(dataset, self.cfg.process_batch_size, self.cfg.num_threads,
                                train=False, sampler=sampler)

    def _profile(self) -> dict:
        """Parameters and FLOPs of the dense (and slim) model; building them also checks that
        the architecture takes this configuration (and that --reset_layer_name names layers)."""
        cfg = self.cfg
        dense = net_utils.get_model(cfg)
        if cfg.reset_layer_name:
            try:
                net_utils.reset_layers(dense, cfg.reset_layer_name, cfg.reset_bn)
            except ValueError as error:
                raise UserError(f"--reset_layer_name {cfg.reset_layer_name}: {error}") from None
        profile = {"dense_gflops": count_flops(dense, cfg.image_size) / 1e9,
                   "params": count_parameters(dense), "slim_gflops": None, "slim_params": None}
        log.info(f"dense model: {profile['params']:,} parameters, {profile['dense_gflops']:.3f} "
                 f"GFLOPs at {cfg.image_size}px, {net_utils.count_fit_weights(dense):,} fit weights")
        if self.has_slim:
            slim = net_utils.get_model(cfg, slim=True)
            profile.update(slim_gflops=count_flops(slim, cfg.image_size) / 1e9,
                           slim_params=count_parameters(slim))
            log.info(f"slim model: {profile['slim_params']:,} parameters, "
                     f"{profile['slim_gflops']:.3f} GFLOPs")
        return profile

    def test(self, model, description="test") -> dict:
        if self.test_loader is None:
            return dict(NO_METRICS)
        return evaluate(model, self.test_loader, self.criterion, self.device,
                        self.splits.num_classes, description, precision=self.precision,
                        channels_last=self.cfg.channels_last)

    def load_model(self, path: str) -> nn.Module:
        model = load_fitting(net_utils.get_model(self.cfg), load_checkpoint(path), path)
        return prepare_model(model, self.cfg, self.device)

    def append(self, row: dict):
        if self.world.is_main:
            with disk_errors(self.exp.csv, self.exp.resume_command(self.cfg)):
                append_result(self.exp.csv, row)

    def dense_row(self, g: int, model: nn.Module, last: dict):
        cfg = self.cfg
        dense_test = self.test(model)
        best_test = self.test(self.load_model(os.path.join(self.exp.checkpoint_dir(g), "model_best.pth")))
        self.append({
            "Name": cfg.name, "Split Rate": cfg.split_rate, "Bias Split Rate": cfg.bias_split_rate,
            "Current Val Top 1": last["curr_acc1"], "Current Val Top 5": last["curr_acc5"],
            "Best Val Top 1": last["best_acc1"], "Best Val Top 5": last["best_acc5"],
            "Current Tst Top 1": dense_test["top1"], "Current Tst Top 5": dense_test["top5"],
            "Best Tst Top 1": best_test["top1"], "Best Tst Top 5": best_test["top5"],
            "Best Trn Top 1": last["best_train"]["top1"], "Best Trn Top 5": last["best_train"]["top5"],
            "Generation": g})
        self.summary.add_scalar("test/dense_top1", dense_test["top1"], g)
        log.info(f"generation {g}: dense test top1 {dense_test['top1']:.2f} top5 {dense_test['top5']:.2f}")

    def slim_row(self, g: int, model: nn.Module):
        slim = net_utils.extract_slim(net_utils.get_model(self.cfg, slim=True), model)
        slim = prepare_model(slim, self.cfg, self.device)
        slim_test = self.test(slim, "slim test")
        self.append({"Name": self.cfg.name, "Split Rate": SLIM, "Bias Split Rate": SLIM,
                     "Current Tst Top 1": slim_test["top1"], "Current Tst Top 5": slim_test["top5"],
                     "Generation": g})
        self.summary.add_scalar("test/slim_top1", slim_test["top1"], g)
        log.info(f"generation {g}: slim test top1 {slim_test['top1']:.2f} top5 {slim_test['top5']:.2f}")

    def run(self, resume_state=None):
        cfg, exp = self.cfg, self.exp
        progress = exp.progress()
        self.summary = writer_for(self.world, exp, os.path.join(exp.dir, "logs"),
                                  exp.resume_command(cfg))
        model = None
        for g in range(cfg.num_generations):
            if progress.generation_done(cfg, g):
                continue
            model = None
            if g not in progress.dense:
                state = resume_state if resume_state and resume_state["generation"] == g else None
                if state is None and os.path.exists(exp.resume_state(g)):
                    state = load_checkpoint(exp.resume_state(g))
                if state is None or not (state["batch"] is None and state["epoch"] == cfg.epochs - 1):
                    trainer = GenerationTrainer(cfg, exp, g, self.device, self.splits,
                                                self.val_loader, self.criterion, self.stop,
                                                self.world)
                    model = trainer.start(state)
                    trainer.train()
                last = load_checkpoint(exp.last_checkpoint(g, cfg.epochs))
                if model is None:
                    model = self.load_model(exp.last_checkpoint(g, cfg.epochs))
                self.dense_row(g, model, last)
            if progress.needs_slim(cfg, g):
                if model is None:
                    model = self.load_model(exp.last_checkpoint(g, cfg.epochs))
                self.slim_row(g, model)
            if self.world.is_main:
                if os.path.exists(exp.resume_state(g)):
                    os.remove(exp.resume_state(g))
                prune_checkpoints(exp, g, cfg.keep_checkpoints)
            distributed.barrier()
        self.summary.close()
        self.check_replicas(model)
        table = generation_table(cfg, exp, self.profile)
        log.info("\n" + format_generation_table(table))
        log.info(f"results: {exp.csv}")
        if self.world.is_main:
            with disk_errors(os.path.join(exp.dir, "summary.{md,csv,png}"), exp.resume_command(cfg)):
                _, prefix = write_report([exp.dir])
            log.info(f"plot of test top-1 by generation: {prefix}.png")
        return table

    def check_replicas(self, model):
        """Under torchrun, confirm that every rank ends with the same weights."""
        if not self.world.distributed or model is None:
            return
        digests = [None] * self.world.size
        torch.distributed.all_gather_object(digests, weights_digest(model))
        log.info(f"final weights sha256 by rank: {' '.join(digests)}")
        if len(set(digests)) > 1:
            log.warning("the final weights differ between ranks")


def on_main(world: World, action):
    """`action()` on rank 0 only; an error it raises stops every rank with the same message."""
    if not world.distributed:
        return action()
    outcome, result = [None], None
    if world.is_main:
        try:
            result = action()
            outcome[0] = ("ok", None)
        except UserError as error:
            outcome[0] = ("error", str(error))
    torch.distributed.broadcast_object_list(outcome, src=0)
    if outcome[0][0] == "error":
        raise UserError(outcome[0][1])
    return result


def open_on_main(cfg, world: World):
    """open_experiment and the seed of a new run, decided on rank 0 and shared with every rank:
    (cfg, experiment, resume_state, new, seed)."""
    decided, resume_state = [None], None
    if world.is_main:
        try:
            cfg, exp, resume_state = open_experiment(cfg)
            seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
            decided[0] = ("ok", (cfg, exp.dir, exp.name, seed))
        except UserError as error:
            decided[0] = ("error", str(error))
    if world.distributed:
        torch.distributed.broadcast_object_list(decided, src=0)
    if decided[0][0] == "error":
        raise UserError(decided[0][1])
    cfg, folder, name, seed = decided[0][1]
    if not world.is_main and cfg.resume not in (None, RESUME_LATEST):
        resume_state = load_checkpoint(cfg.resume)
    return cfg, Experiment(folder, name), resume_state, not cfg.resume, seed


def run(cfg):
    """Start (or, with --resume, continue) the experiment of `cfg`; return the table rows."""
    world = distributed.init_world()
    ke = None
    early = EarlyRecords()            # for the log file, which exists only once all is checked
    try:
        with StopRequest() as stop:
            cfg, exp, resume_state, new, seed = open_on_main(cfg, world)
            if not new and exp.finished(cfg):
                log.info(f"experiment {exp.dir} is already finished ({cfg.num_generations} "
                         f"generations); results in {exp.csv}")
                return []
            ke = KnowledgeEvolution(cfg, exp, stop, world, new, seed)
            ke.prepare(early)
            return ke.run(resume_state)
    except UserError as error:
        if ke is not None and ke.session is not None:
            ke.session.log_error(f"error: {error}")         # the log file says why it stopped
        raise
    finally:
        early.take()
        if ke is not None and ke.session is not None:
            ke.session.close()
        distributed.shutdown()
