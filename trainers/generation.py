"""One generation's training: its epochs, with a resumable checkpoint after the first epoch that
ends --save_every_minutes after the last one written, after the generation's last epoch, and at
the batch where a stop signal arrived."""
import datetime
import logging
import os
import time
from typing import NamedTuple

import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from data import loading
from data.augment import BatchMix, MixedForward
from data.samplers import EpochShuffleSampler, SeededSamples
from errors import UserError
from models.evolution import convert_sync_batchnorm
from models.factory import get_model
from trainers.engine import NonFiniteLoss, train_one_epoch
from trainers.experiment import Experiment, disk_errors
from trainers.run_checks import loss_warning
from trainers.signals import Interrupted, StopRequest
from trainers.state import NO_METRICS, TrainingState, rng_state, seed_everything, set_rng_state
from trainers.tasks import make_task
from utils import counting, distributed
from utils.checkpoint import atomic_link, atomic_save, load_checkpoint, load_fitting
from utils.checkpoint_writer import CheckpointWriter, snapshot
from utils.compute_record import COMPUTE_FILE, add_training
from utils.cs_kd import PairBatchSampler, cs_kd_forward
from utils.distill import TeacherForward
from utils.distributed import World
from utils.ema import EMA_FILE, averaged
from utils.performance import Precision, compiled, prepare_model
from utils.schedulers import build_scheduler, continues_across_generations

log = logging.getLogger("ke")


class NoWriter:
    """Stands in for SummaryWriter on the processes that do not write (ranks other than 0)."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def writer_for(world: World, exp: Experiment, folder: str, command: str, **kwargs):
    """The experiment's TensorBoard writer for `folder` on rank 0 (`command` resumes the run
    when a write fails), a stand-in on the other ranks."""
    return exp.event_writer(folder, command, **kwargs) if world.is_main else NoWriter()


def merge_epoch_stats(before: dict, after: dict) -> dict:
    """Train statistics of one epoch that ran in two parts (stopped part-way, then resumed)."""
    n = before["count"] + after["count"]
    merged = dict(after, count=n, time=before["time"] + after["time"])
    for key in ("loss", "top1", "top5"):
        merged[key] = (before[key] * before["count"] + after[key] * after["count"]) / n if n else 0.0
    return merged


def time_left(seconds_per_epoch: float, generation: int, epoch: int, cfg) -> float:
    """Seconds the epochs after `epoch` of `generation` take, this one's and the later
    generations', at `seconds_per_epoch`."""
    epochs_left = (cfg.epochs - epoch - 1) + (cfg.num_generations - generation - 1) * cfg.epochs
    return seconds_per_epoch * epochs_left


class TrainInput:
    """The training split's sampler and loader, built once per run: every generation iterates
    the same loader (its workers persist, and so do their caches), and `for_generation` re-seeds
    the sampler with the seed a loader built for that generation alone had, so the order of
    every epoch is unchanged. With `crops_later` the training batches come uncropped and are
    cropped on the device (data.batched_crops)."""

    def __init__(self, cfg, splits, world: World, task, crops_later: bool = False):
        self.cfg = cfg
        seed, batch_size = cfg.seed, cfg.process_batch_size
        task_sampler = task.train_sampler(splits, seed)
        self.pairs = task_sampler is None and cfg.cs_kd      # CS-KD's batches of pairs
        if task_sampler is not None:        # --samples_per_class
            self.sampler = task_sampler
            self.loader = loading.make_loader(SeededSamples(splits.train), batch_size,
                                              cfg.num_threads, train=True, sampler=self.sampler,
                                              crops_later=crops_later)
        elif cfg.cs_kd:
            self.sampler = PairBatchSampler(splits.train.targets, batch_size, seed,
                                            num_replicas=world.size, rank=world.rank,
                                            drop_last=False, drop_single=True,
                                            with_seeds=True)
            self.loader = loading.make_pair_loader(SeededSamples(splits.train), self.sampler,
                                                   num_workers=cfg.num_threads,
                                                   crops_later=crops_later)
        else:
            self.sampler = EpochShuffleSampler(len(splits.train), seed, num_replicas=world.size,
                                               rank=world.rank)
            self.loader = loading.make_loader(SeededSamples(splits.train), batch_size,
                                              cfg.num_threads, train=True, sampler=self.sampler,
                                              crops_later=crops_later)

    def for_generation(self, generation: int) -> "TrainInput":
        """Re-seeded for `generation` (its order depends only on the seed and the epoch)."""
        self.sampler.seed = self.cfg.seed + generation
        return self


class PreviousGeneration(NamedTuple):
    """What a generation takes from the one before it, in memory: its last weights, optimizer
    and schedule, the very values of its last checkpoint (read from there after a resume)."""
    state_dict: dict
    optimizer: dict
    scheduler: dict

    @classmethod
    def of(cls, trainer: "GenerationTrainer") -> "PreviousGeneration":
        return cls(trainer.model.state_dict(), trainer.optimizer.state_dict(),
                   trainer.scheduler.state_dict())


class GenerationTrainer:
    """Trains one generation's dense model: `fresh_model`, then `start` (from the weights the
    generation inherits, or from a saved TrainingState), then `train`. `train_input` (a
    TrainInput, built here when not given) holds the training loader; `previous` (a
    PreviousGeneration) what the previous generation left in memory, else its checkpoint is
    read. With `crops_later` the training batches come uncropped and are cropped on the device
    (data.batched_crops)."""

    def __init__(self, cfg, exp: Experiment, generation: int, device, splits, val_loader,
                 criterion, stop: StopRequest, world: World, task=None, crops_later=False,
                 train_input: TrainInput | None = None,
                 previous: PreviousGeneration | None = None):
        self.cfg, self.exp, self.generation, self.device = cfg, exp, generation, device
        self.val_loader, self.criterion, self.stop, self.world = val_loader, criterion, stop, world
        self.num_classes, self.classes = splits.num_classes, list(splits.classes)
        self.task = task or make_task(cfg, splits.num_classes, device, world)
        self.precision = Precision(cfg.amp, device)  # a fresh gradient scaler each generation
        self.previous = previous if generation > 0 else None
        train_input = train_input or TrainInput(cfg, splits, world, self.task, crops_later)
        train_input = train_input.for_generation(generation)
        self.sampler, self.train_loader = train_input.sampler, train_input.loader
        self.forward = cs_kd_forward if train_input.pairs else self.task.forward()
        if cfg.distill_previous and generation > 0:
            self.forward = TeacherForward(self.teacher(), cfg.distill_weight,
                                          cfg.distill_temperature, self.forward)
        mix = BatchMix.of(cfg, splits.num_classes)
        if mix is not None:                 # --mixup / --cutmix: every forward sees mixed batches
            self.forward = MixedForward(mix, self.forward)
        self.ema = None                     # --ema: made anew in `start`
        self.best, self.current, self.best_train = dict(NO_METRICS), dict(NO_METRICS), dict(NO_METRICS)
        self.best_epoch = None
        self.next_epoch, self.next_batch = 0, 0
        self.partial_epoch = None
        self.checkpoints = CheckpointWriter()   # checkpoints are written while the next epoch trains
        self.save_seconds = 0.0            # time the training thread spent in save()
        self.pending_best = None           # a copy of the best epoch's state not yet on disk
        self.last_write = time.monotonic()  # of the resume state (or initial.state)

    def previous_checkpoint(self) -> str:
        return self.exp.last_checkpoint(self.generation - 1, self.cfg.epochs)

    def teacher(self) -> nn.Module:
        """The previous generation's last weights (kept on disk until this generation ends)."""
        path = self.previous_checkpoint()
        if self.previous is not None:
            teacher = load_fitting(get_model(self.cfg), {"state_dict": self.previous.state_dict}, path)
        else:
            teacher = load_fitting(get_model(self.cfg), load_checkpoint(path), path)
        return prepare_model(teacher, self.cfg, self.device)

    def fresh_model(self) -> nn.Module:
        """This generation's own draw of the model (seeded by the run's seed + generation)."""
        seed_everything(self.cfg.seed + self.generation)
        return get_model(self.cfg)

    def start_epoch(self, epoch: int, skip_batches: int):
        """Point the sampler at `epoch`, past its first `skip_batches` batches (resume)."""
        if self.cfg.cs_kd:
            self.sampler.set_epoch(epoch, start_batch=skip_batches)
        else:
            self.sampler.set_epoch(epoch, start=skip_batches * self.cfg.process_batch_size)

    def start(self, model: nn.Module, state: TrainingState | None = None) -> nn.Module:
        """Set up `model` (the generation's first weights) for training with a fresh optimizer
        and schedule, or continue from `state` (weights, optimizer, schedule, metrics, random
        generators, position)."""
        cfg = self.cfg
        if state is not None:
            load_fitting(model, state.to_checkpoint(), self.exp.resume_state(self.generation))
        if cfg.sync_bn and self.world.distributed:
            model = convert_sync_batchnorm(model)
        self.model = prepare_model(model, cfg, self.device)
        self.train_model = self.model
        if self.world.distributed:
            # masks never change during training: keep DDP from broadcasting them every step
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.model, [name for name, _ in self.model.named_buffers() if name.endswith("mask")])
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.freezes_parameters)
        self.train_model = compiled(self.train_model, cfg)
        if getattr(cfg, "ema", None) is not None:
            self.ema = averaged(self.model, cfg.ema)
            if state is not None and state.ema is not None:
                self.ema.load_state_dict(state.ema)
        if state is not None and state.criterion:
            self.criterion.load_state_dict(state.criterion)
        self.optimizer = self.task.optimizer(self.model, self.criterion)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        if state is None:
            if self.generation > 0 and continues_across_generations(cfg.lr_policy):
                previous = self.previous or TrainingState.from_checkpoint(
                    load_checkpoint(self.previous_checkpoint()))
                self.optimizer.load_state_dict(previous.optimizer)   # momentum carries on too
                self.scheduler.load_state_dict(previous.scheduler)
            self.save({"generation": self.generation, "arch": cfg.arch,
                       "state_dict": self.model.state_dict(), "config": vars(cfg).copy()},
                      os.path.join(self.exp.checkpoint_dir(self.generation), "initial.state"))
            return self.model
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.precision.load_state_dict(state.scaler)
        self.best, self.current = dict(state.best), dict(state.current)
        self.best_train, self.best_epoch = dict(state.best_train), state.best_epoch
        self.partial_epoch = state.partial_epoch
        self.next_epoch, self.next_batch = state.next_epoch, state.next_batch
        set_rng_state(state.rng)
        where = counting.resume_point(self.generation, cfg.num_generations, self.next_epoch,
                                      self.next_batch, cfg.epochs)
        log.info(f"resuming at {where}")
        return self.model

    def save(self, obj, path, *more_paths, best=None):
        """Write `obj` to `path` on rank 0, in the background; `more_paths` become other names
        of that one file. A copy of `obj` is taken now; the previous write is waited for first
        (and its error, a full disk say, raised here). `best`: a copy (`snapshot`) of an
        earlier epoch's state, written first as model_best.pth."""
        if not self.world.is_main:
            return
        started = time.perf_counter()
        command = self.exp.resume_command(self.cfg)
        with disk_errors(path, command, self.exp.dir):
            target = self.exp.writable(path)
        names = []
        for other in more_paths:
            with disk_errors(other, command, self.exp.dir):
                names.append(self.exp.writable(other))
        copy = snapshot(obj)
        best_path = os.path.join(self.exp.checkpoint_dir(self.generation), "model_best.pth")
        if best is not None:
            with disk_errors(best_path, command, self.exp.dir):
                best_target = self.exp.writable(best_path)

        def write():
            if best is not None:
                with disk_errors(best_path, command, self.exp.dir):
                    atomic_save(best, best_target)
            with disk_errors(path, command, self.exp.dir):
                atomic_save(copy, target)
            for other in names:
                with disk_errors(other, command, self.exp.dir):
                    atomic_link(target, other)

        self.checkpoints.submit(write)
        self.save_seconds += time.perf_counter() - started

    def state(self, epoch: int, batch=None, partial_epoch=None) -> TrainingState:
        return TrainingState(
            generation=self.generation, epoch=epoch, batch=batch, arch=self.cfg.arch,
            state_dict=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.precision.state_dict(),
            rng=rng_state(), config=vars(self.cfg).copy(), classes=self.classes,
            best=dict(self.best), current=dict(self.current), best_train=dict(self.best_train),
            best_epoch=self.best_epoch, partial_epoch=partial_epoch,
            criterion=self.criterion.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None)

    def update_ema(self):
        self.ema.update_parameters(self.model)

    def train(self):
        """Train the generation's remaining epochs; every checkpoint is on disk on return (and
        when an error or a stop signal ends it early)."""
        try:
            self._train_epochs()
        except BaseException:
            self.checkpoints.wait(reraise=False)   # the error on its way is the one to report
            raise
        self.checkpoints.wait()
        distributed.barrier()  # every checkpoint is on disk before any rank reads one

    def _train_epochs(self):
        cfg, g = self.cfg, self.generation
        ckpt_dir = self.exp.checkpoint_dir(g)
        writer = writer_for(self.world, self.exp, os.path.join(self.exp.generation_dir(g), "logs"),
                            self.exp.resume_command(cfg), purge_step=self.next_epoch)
        started = time.perf_counter()
        self.trained = {"images": 0, "seconds": 0.0}   # the finished epochs', for compute.json
        for epochs_run, epoch in enumerate(range(self.next_epoch, cfg.epochs), start=1):
            skip = self.next_batch if epoch == self.next_epoch else 0
            self.start_epoch(epoch, skip)
            self.task.start_epoch(self.model, epoch)          # --warm: which parameters train
            lr = self.optimizer.param_groups[0]["lr"]
            try:
                stats = train_one_epoch(self.train_model, self.train_loader, self.criterion,
                                        self.optimizer, self.device, self.num_classes,
                                        counting.position(g, cfg.num_generations, epoch,
                                                          cfg.epochs), cfg.print_freq, self.stop,
                                        precision=self.precision, channels_last=cfg.channels_last,
                                        forward=self.forward,
                                        after_step=self.update_ema if self.ema is not None else None)
            except NonFiniteLoss as error:
                where = counting.position(g, cfg.num_generations, epoch, cfg.epochs)
                raise UserError(f"non-finite loss at {where}, in batch {skip + error.batch + 1}; "
                                f"the last good checkpoint is kept in "
                                f"{ckpt_dir}; lower --lr or use --amp none") from None
            if epoch == self.next_epoch and self.partial_epoch:
                stats = merge_epoch_stats(self.partial_epoch, stats)   # stopped and resumed here
                self.partial_epoch = None
            if stats["stopped_after"] is not None:
                self.record_training()
                self.stop_here(writer, epoch, skip, stats)
            self.trained["images"] += stats["count"]
            self.trained["seconds"] += stats["time"]
            if (g, epoch) == (0, 0) and self.task.loss_has_chance:
                warning = loss_warning(stats["loss"], self.num_classes, cfg.lr,
                                       cfg.num_generations, cfg.epochs)
                if warning:
                    log.warning(warning)
            distributed.broadcast_buffers(self.model)
            self.scheduler.step()
            self.best_train = {k: max(self.best_train[k], stats[k]) for k in self.best_train}
            for tag, value in self.task.train_scalars(stats).items():
                writer.add_scalar(tag, value, epoch)
            writer.add_scalar("lr", lr, epoch)
            writer.add_scalar("epoch_time", stats["time"], epoch)
            line = (f"{counting.position(g, cfg.num_generations, epoch, cfg.epochs)}, "
                    f"lr {lr:.5f} | train loss {stats['loss']:.4f} {self.task.train_labels[0]} "
                    f"{stats['top1']:.2f}")
            last, paths, improved = epoch == cfg.epochs - 1, [], False
            if (epoch + 1) % cfg.test_interval == 0 or last:
                self.current = self.task.evaluate(self.model, self.val_loader, self.criterion,
                                                  "val", self.precision, cfg.channels_last)
                for tag, value in self.task.eval_scalars(self.current).items():
                    writer.add_scalar(tag, value, epoch)
                if self.best_epoch is None or self.current["top1"] > self.best["top1"]:
                    self.best = {"top1": self.current["top1"], "top5": self.current["top5"]}
                    self.best_epoch = epoch
                    paths.append(os.path.join(ckpt_dir, "model_best.pth"))
                    self.pending_best, improved = None, True
                line += f" | {self.task.eval_text(self.current, self.best)}"
            eta = time_left((time.perf_counter() - started) / epochs_run, g, epoch, cfg)
            log.info(line + f" | {stats['time']:.1f}s, eta {datetime.timedelta(seconds=round(eta))}")
            kept = last or (cfg.save_every > 0 and (epoch + 1) % cfg.save_every == 0)
            if kept:
                paths.append(os.path.join(ckpt_dir, f"epoch_{epoch}.state"))
            if last and self.ema is not None:      # tested once the generation's rows are due
                self.save({"generation": g, "arch": cfg.arch, "ema_decay": cfg.ema,
                           "state_dict": self.ema.module.state_dict()},
                          os.path.join(self.exp.generation_dir(g), EMA_FILE))
            if kept or self.resume_state_due():
                # one file under every name this epoch's state goes by (best, epoch, resume);
                # an earlier best epoch since the last write goes to model_best.pth first
                self.save(self.state(epoch).to_checkpoint() if self.world.is_main else None,
                          *paths, self.exp.resume_state(g), best=self.take_pending_best())
                self.last_write = time.monotonic()
            elif improved and self.world.is_main:      # a new best: on disk with the next write
                self.pending_best = snapshot(self.state(epoch).to_checkpoint())
        writer.close()
        self.record_training()

    def record_training(self):
        """Add the images and seconds of the epochs finished here to the run's compute.json."""
        if self.world.is_main and (self.trained["images"] or self.trained["seconds"]):
            with disk_errors(os.path.join(self.exp.dir, COMPUTE_FILE),
                             self.exp.resume_command(self.cfg), self.exp.dir):
                add_training(self.exp.dir, self.generation, self.trained["images"],
                             self.trained["seconds"])
        self.trained = {"images": 0, "seconds": 0.0}

    def resume_state_due(self) -> bool:
        """Whether --save_every_minutes have passed since the resume state was last written."""
        return time.monotonic() - self.last_write >= 60 * self.cfg.save_every_minutes

    def take_pending_best(self):
        best, self.pending_best = self.pending_best, None
        return best

    def stop_here(self, writer, epoch: int, skip: int, stats: dict):
        """A stop signal arrived: save the state after the batches done, then raise Interrupted."""
        batch = skip + stats["stopped_after"]
        partial = {k: stats[k] for k in ("loss", "top1", "top5", "count", "time")}
        self.save(self.state(epoch, batch, partial).to_checkpoint(),
                  self.exp.resume_state(self.generation), best=self.take_pending_best())
        self.checkpoints.wait()
        distributed.barrier()
        writer.close()
        raise Interrupted(self.stop.signal_number,
                          counting.position(self.generation, self.cfg.num_generations, epoch,
                                            self.cfg.epochs, batch),
                          self.exp.resume_command(self.cfg))
