"""The generation loop of Knowledge Evolution.

Each generation starts from the previous generation's last weights, forgets part of them
(the reset hypothesis is re-drawn), trains its epochs, and is tested: the dense model, then the
slim network cut out of its fit hypothesis. Where a run starts (a new run at generation 0, a
resumed one where it stopped) is settled before the loop, by trainers/resume.py.

Progress lives on disk: the results CSV says which generations are finished, and
`gen_<g>/checkpoints/resume.state` holds the exact state after the last saved epoch (written
every --save_every_minutes, at the generation's end) or interrupted batch.
"""
import hashlib
import logging
import os
import random
import re
import stat

import torch
import torch.nn as nn

from configs.base_config import config_warnings, resolve
from data import DataError, loading
from data.augment import ImageAugment
from data.cache import CachedImages, can_crop_later
from data.samplers import ShardSampler
from errors import UserError, short
from methods import method_of
from models.channel_spaces import GraphSplitError
from models.evolution import count_fit_weights, extract_slim
from models.factory import get_model
from trainers.data_records import check_records, write_records
from trainers.experiment import (
    RESUME_LATEST,
    EarlyRecords,
    Experiment,
    check_resumable,
    disk_errors,
    has_slim,
    no_slim_reason,
    open_experiment,
    settle_experiment,
)
from trainers.forget_context import ForgetContext
from trainers.generation import GenerationTrainer, PreviousGeneration, TrainInput, writer_for
from trainers.resume import Start, where_to_start
from trainers.run_checks import data_warnings
from trainers.signals import StopRequest
from trainers.state import NO_METRICS, TrainingState
from trainers.tasks import check_retrieval_data, make_task
from utils import counting, distributed
from utils.checkpoint import load_checkpoint, load_fitting, load_weights
from utils.compute_record import COMPUTE_FILE, record_flops
from utils.csv_utils import EMA, SLIM, append_results, read_results, row_kind
from utils.distributed import World
from utils.ema import EMA_FILE
from utils.model_profile import count_flops, count_parameters, format_generation_table
from utils.performance import Precision, configure_backends, prepare_model
from utils.safe_files import is_temporary

log = logging.getLogger("ke")

KEEP_LAST_GENERATIONS = 4
SKIP_TEST_OF_SAME_WEIGHTS = True   # tests turn it off to compare with a second test pass


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


def pretrained_start(cfg, model: nn.Module) -> nn.Module:
    """Generation 0's first weights: --pretrained's, with the method forgetting its part (the
    reset hypothesis for KE) unless --keep_pretrained_reset, else the draw itself."""
    if cfg.pretrained:
        load_weights(model, cfg.pretrained, cfg)
        if not cfg.keep_pretrained_reset:   # as the reference: the fit part starts pretrained
            method_of(cfg).forget_pretrained(cfg, model, 0)
    return model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether the two models hold the same tensors (every parameter and buffer, bit for bit)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape
        and torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def weights_digest(model: nn.Module) -> str:
    """sha256 over every tensor of the state_dict, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# the files a run writes in a generation's checkpoints/ (utils/checkpoint_writer.py): pruning
# removes these, by exact name, and nothing else
RUN_CHECKPOINT = re.compile(r"epoch_\d+\.state|resume\.state|initial\.state|model_best\.pth")


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
            others = []
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if ((RUN_CHECKPOINT.fullmatch(name) or is_temporary(name))
                        and stat.S_ISREG(os.lstat(path).st_mode)):
                    os.remove(path)
                    continue
                others.append(name)
            if others:
                log.warning(f"kept {folder}: it holds files the run did not write "
                            f"({short(others)}), left as they are")
            else:
                os.rmdir(folder)
                log.info(f"removed {os.path.relpath(folder, exp.dir)}")


def generation_table(exp: Experiment, profile: dict) -> list:
    """Rows of the final table, read back from the results CSV."""
    table = {}
    for row in read_results(exp.csv):
        g = int(row["Generation"])
        entry = table.setdefault(g, {"generation": g, "dense_top1": None, "slim_top1": None, **profile})
        kind = row_kind(row)
        if kind != "dense" and kind != SLIM:
            continue
        entry[f"{kind}_top1"] = row["Current Tst Top 1"]
    return [table[g] for g in sorted(table)]


def crops_on_device(cfg, train, device: torch.device) -> bool:
    """Whether the training batches are cropped on the device (data.batched_crops), as
    --batched_crops says: auto takes it on CUDA when the training images are cached. Logged."""
    possible = can_crop_later(train)
    if cfg.batched_crops == "on" and not possible:
        why = ("this dataset's training transform runs per image; use --batched_crops auto"
               if isinstance(train, CachedImages)
               else "the training images are not in the decoded cache; add --cache_images")
        raise UserError(f"--batched_crops on: {why}")
    chosen = cfg.batched_crops == "on" or (cfg.batched_crops == "auto" and possible
                                           and device.type == "cuda")
    slower = not chosen and ImageAugment.of(cfg) is not None
    log.info("training crops: " + (f"batched on {device} (--batched_crops {cfg.batched_crops})"
                                   if chosen else "per image in the data loader")
             + (": --augment/--random_erasing run on each crop, item by item, neither batched "
                "on the device nor built into one batch (benchmarks/bench_augment.py measures "
                "the cost)" if slower else ""))
    return chosen


class KnowledgeEvolution:
    """The whole experiment: `prepare` checks everything and opens the folder, `run` trains."""

    def __init__(self, cfg, exp: Experiment, stop: StopRequest, world: World, new: bool, seed: int):
        self.flags, self.exp, self.stop, self.world = cfg, exp, stop, world
        self.new, self.seed = new, seed
        self.device = select_device(cfg, world)
        configure_backends(self.device)
        self.precision = Precision(cfg.amp, self.device)  # evaluation: autocast only
        self.session = None

    def prepare(self, early=None):
        """Read the data, resolve the configuration and build the model once, so that bad input
        stops the run before anything is written; then create or reopen the experiment folder."""
        flags = self.flags
        self.splits = loading.get_data(flags)
        try:
            self.cfg = resolve(flags, self.splits.num_classes, self.world.size, self.seed,
                               self.splits.validation_split)
        except ValueError as error:
            raise UserError(str(error)) from None
        cfg = self.cfg
        self.method = method_of(cfg)
        if len(self.splits.train) < 2 * self.world.size:
            raise UserError(f"the training split has {len(self.splits.train)} image(s); each "
                            f"process needs at least 2 for BatchNorm: add training images")
        check_retrieval_data(cfg, self.splits)
        self.crops_later = crops_on_device(cfg, self.splits.train, self.device)
        if not self.new:
            check_resumable(cfg, flags, self.exp)
            on_main(self.world, lambda: check_records(self.exp.dir, self.splits.records))
        try:                        # building the model reads a graph-derived arch's graph
            self.has_slim = has_slim(cfg)
            self.profile = self.check_model()
        except GraphSplitError as error:
            raise UserError(f"{error}; pick another --arch") from None
        self.session = on_main(self.world, lambda: settle_experiment(
            cfg, self.exp, self.new, early.take() if early else ()))
        on_main(self.world, self.write_data_records)
        on_main(self.world, self.record_flops)
        log.info(f"experiment {self.exp.dir} on {self.device}, seed {cfg.seed}")
        if not self.has_slim:
            log.info(f"no slim rows: {no_slim_reason(cfg)}")
        for warning in config_warnings(cfg) + data_warnings(
                self.splits.train.targets, list(self.splits.classes), cfg.batch_size):
            log.warning(warning)
        self.val_loader = self.eval_loader(self.splits.val)
        self.test_loader = self.eval_loader(self.splits.test) if self.splits.test is not None else None
        self.task = make_task(cfg, self.splits.num_classes, self.device, self.world)
        self.criterion = self.task.loss         # classification's, for the test rows

    def write_data_records(self):
        """val_split.csv / noisy_labels.csv in the experiment folder (data.lists.DataSplits)."""
        records = self.splits.records
        with disk_errors(self.exp.dir, self.exp.resume_command(self.cfg)):
            write_records(self.exp.dir, records)
        for name in records:
            log.info(f"data record: {os.path.join(self.exp.dir, name)}")

    def record_flops(self):
        """One image's forward FLOPs, for the compute column of utils.report."""
        path = os.path.join(self.exp.dir, COMPUTE_FILE)
        with disk_errors(path, self.exp.resume_command(self.cfg), self.exp.dir):
            record_flops(self.exp.dir, round(self.profile["dense_gflops"] * 1e9))

    def eval_loader(self, dataset):
        """Validation or test batches: --eval_batch_size over the processes."""
        sampler = ShardSampler(len(dataset), self.world.size, self.world.rank)
        batch = max(1, self.cfg.eval_batch_size // self.world.size)
        return loading.make_loader(dataset, batch, self.cfg.num_threads, train=False,
                                   sampler=sampler)

    def check_model(self) -> dict:
        """Build the dense model once: it must take --pretrained (a new run) and
        --reset_layer_name must name its layers. Returns its (and the slim network's) parameters
        and FLOPs."""
        cfg = self.cfg
        dense = get_model(cfg)
        if self.new and cfg.pretrained:     # a file that does not fit (or is refused) stops us here
            load_weights(dense, cfg.pretrained, cfg, report=False)
        try:
            self.method.check_model(cfg, dense)
        except ValueError as error:
            raise UserError(str(error)) from None
        profile = {"dense_gflops": count_flops(dense, cfg.image_size) / 1e9,
                   "params": count_parameters(dense), "slim_gflops": None, "slim_params": None}
        log.info(f"dense model: {profile['params']:,} parameters, {profile['dense_gflops']:.3f} "
                 f"GFLOPs at {cfg.image_size}px, {count_fit_weights(dense):,} fit weights")
        if self.has_slim:
            slim = get_model(cfg, slim=True)
            profile.update(slim_gflops=count_flops(slim, cfg.image_size) / 1e9,
                           slim_params=count_parameters(slim))
            log.info(f"slim model: {profile['slim_params']:,} parameters, "
                     f"{profile['slim_gflops']:.3f} GFLOPs")
        return profile

    def run(self, start: Start) -> list:
        cfg, exp = self.cfg, self.exp
        self.summary = writer_for(self.world, exp, os.path.join(exp.dir, "logs"),
                                  exp.resume_command(cfg))
        model, train_input, previous = None, None, None
        for g in range(start.generation, cfg.num_generations):
            work = start.work(g)
            if work.train:
                # one training loader for the whole run, its workers kept across generations
                train_input = train_input or TrainInput(cfg, self.splits, self.world, self.task,
                                                        self.crops_later)
                trainer = GenerationTrainer(cfg, exp, g, self.device, self.splits, self.val_loader,
                                            self.task.criterion(g), self.stop, self.world,
                                            self.task, crops_later=self.crops_later,
                                            train_input=train_input, previous=previous)
                model = trainer.fresh_model()
                if work.state is None:   # forget part of the previous generation
                    model = self.inherit(trainer, g, model, previous)
                model = trainer.start(model, work.state)
                trainer.train()
                previous = PreviousGeneration.of(trainer)
            else:
                previous = None      # the next generation reads this one's checkpoint
                model = self.load_model(exp.last_checkpoint(g, cfg.epochs))
            if work.dense:
                last = TrainingState.from_checkpoint(load_checkpoint(exp.last_checkpoint(g, cfg.epochs)))
                self.dense_row(g, model, last)
            if work.slim:
                self.slim_row(g, model)
            self.end_generation(g)
        self.summary.close()
        self.check_replicas(model)
        return self.report()

    def inherit(self, trainer: GenerationTrainer, g: int, model: nn.Module,
                before: PreviousGeneration | None = None) -> nn.Module:
        """Give `model` (generation g's fresh draw) the weights it starts from: what the --forget
        method makes of the previous generation's (`before`, in memory, else read from its last
        checkpoint); for generation 0 --pretrained's (forgetting the reset hypothesis too,
        unless --keep_pretrained_reset), else the draw itself."""
        cfg, exp = self.cfg, self.exp
        if g > 0:
            path = exp.last_checkpoint(g - 1, cfg.epochs)
            ckpt = {"state_dict": before.state_dict} if before is not None else load_checkpoint(path)
            with torch.random.fork_rng(devices=[]):    # its draw must not move the training's
                previous = load_fitting(get_model(cfg), ckpt, path)

            def save(obj, name):
                trainer.save(obj, os.path.join(exp.generation_dir(g), name))
                trainer.checkpoints.wait()
            return self.method.forget(ForgetContext(
                cfg, g, previous, model, self.device, trainer.criterion, self.splits.train,
                cfg.process_batch_size, save=save, folder=exp.generation_dir(g),
                crops_later=self.crops_later))
        return pretrained_start(cfg, model)

    def test(self, model, description="test") -> dict:
        if self.test_loader is None:
            return dict(NO_METRICS)
        return self.task.evaluate(model, self.test_loader, self.criterion, description,
                                  self.precision, self.cfg.channels_last)

    def load_model(self, path: str) -> nn.Module:
        model = load_fitting(get_model(self.cfg), load_checkpoint(path), path)
        return prepare_model(model, self.cfg, self.device)

    def append(self, *rows: dict):
        if self.world.is_main:
            with disk_errors(self.exp.csv, self.exp.resume_command(self.cfg), self.exp.dir):
                append_results(self.exp.csv, [self.task.csv_row(row) for row in rows],
                               self.task.columns)

    def dense_row(self, g: int, model: nn.Module, last: TrainingState):
        cfg = self.cfg
        dense_test = self.test(model)
        best = self.load_model(os.path.join(self.exp.checkpoint_dir(g), "model_best.pth"))
        # the best epoch is often the last one: the same network need not be tested twice
        # (decided together: under torchrun every rank must run the same test passes)
        same = SKIP_TEST_OF_SAME_WEIGHTS and not distributed.any_rank(
            not same_weights(best, model), self.device)
        best_test = dense_test if same else self.test(best)
        extra = []
        others = self.method.extra_rows(cfg, self.exp.generation_dir(g), model) + self.ema_rows(g)
        for kind, other in others:
            result = self.test(other, f"{kind} test")
            row = {"Name": cfg.name, "Split Rate": kind, "Bias Split Rate": kind,
                   "Current Tst Top 1": result["top1"], "Current Tst Top 5": result["top5"],
                   "Generation": g, "Forget": cfg.forget, **self.task.row(result)}
            if kind == EMA:          # validated too: a comparison selects on validation
                val = self.task.evaluate(other, self.val_loader, self.criterion, "ema val",
                                         self.precision, cfg.channels_last)
                row.update({"Current Val Top 1": val["top1"], "Current Val Top 5": val["top5"]})
            extra.append(row)
            self.summary.add_scalar(self.task.test_tag(kind), result["top1"], g)
            log.info(f"{counting.generation(g, cfg.num_generations)}: {kind} {self.task.tested} "
                     f"{self.task.describe(result)}")
        self.append({
            "Name": cfg.name, "Split Rate": cfg.split_rate, "Bias Split Rate": cfg.bias_split_rate,
            "Current Val Top 1": last.current["top1"], "Current Val Top 5": last.current["top5"],
            "Best Val Top 1": last.best["top1"], "Best Val Top 5": last.best["top5"],
            "Current Tst Top 1": dense_test["top1"], "Current Tst Top 5": dense_test["top5"],
            "Best Tst Top 1": best_test["top1"], "Best Tst Top 5": best_test["top5"],
            "Best Trn Top 1": last.best_train["top1"], "Best Trn Top 5": last.best_train["top5"],
            "Generation": g, "Forget": cfg.forget, **self.task.row(dense_test)}, *extra)
        self.summary.add_scalar(self.task.test_tag("dense"), dense_test["top1"], g)
        for key in self.task.logged:
            self.summary.add_scalar(f"test/dense_{key}", dense_test[key], g)
        log.info(f"{counting.generation(g, cfg.num_generations)}: dense {self.task.tested} "
                 f"{self.task.describe(dense_test)}")

    def ema_rows(self, g: int) -> list:
        """[("ema", the generation's moving average of the weights)] with --ema, else []."""
        if getattr(self.cfg, "ema", None) is None:
            return []
        path = os.path.join(self.exp.generation_dir(g), EMA_FILE)
        return [(EMA, self.load_model(path))]

    def slim_row(self, g: int, model: nn.Module):
        slim = extract_slim(get_model(self.cfg, slim=True), model)
        slim = prepare_model(slim, self.cfg, self.device)
        slim_test = self.test(slim, "slim test")
        self.append({"Name": self.cfg.name, "Split Rate": SLIM, "Bias Split Rate": SLIM,
                     "Current Tst Top 1": slim_test["top1"], "Current Tst Top 5": slim_test["top5"],
                     "Generation": g, "Forget": self.cfg.forget, **self.task.row(slim_test)})
        self.summary.add_scalar(self.task.test_tag("slim"), slim_test["top1"], g)
        for key in self.task.logged:
            self.summary.add_scalar(f"test/slim_{key}", slim_test[key], g)
        log.info(f"{counting.generation(g, self.cfg.num_generations)}: slim {self.task.tested} "
                 f"{self.task.describe(slim_test)}")

    def end_generation(self, g: int):
        """The generation's rows are written: its resume state goes, old checkpoints are pruned."""
        if self.world.is_main:
            path = self.exp.resume_state(g)
            with disk_errors(path, self.exp.resume_command(self.cfg), self.exp.dir):
                if os.path.lexists(path) and stat.S_ISREG(os.lstat(path).st_mode):
                    os.remove(path)
                prune_checkpoints(self.exp, g, self.cfg.keep_checkpoints)
        distributed.barrier()

    def report(self) -> list:
        table = generation_table(self.exp, self.profile)
        log.info("\n" + format_generation_table(table, self.task.metric))
        log.info(f"results: {self.exp.csv}")
        if self.world.is_main:
            with disk_errors(os.path.join(self.exp.dir, "summary.{md,csv,png}"),
                             self.exp.resume_command(self.cfg), self.exp.dir):
                from utils.report import write_report  # pandas: imported when a run ends
                _, prefix = write_report([self.exp.dir])
            from utils.report import recall_report
            recalls = recall_report([self.exp.dir])
            if recalls:
                log.info("test R@1 by generation:\n" + recalls)
            log.info(f"plot of {self.task.metric} by generation: {prefix}.png")
        # the other ranks wait: one that leaves the process group while rank 0 still writes
        # the summary can abort at exit (gloo's threads), failing a finished run
        distributed.barrier()
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
            return ke.run(where_to_start(ke.cfg, exp, new, ke.has_slim, resume_state))
    except (UserError, DataError) as error:
        if ke is not None and ke.session is not None:
            ke.session.log_error(f"error: {error}")         # the log file says why it stopped
        raise
    finally:
        early.take()
        if ke is not None and ke.session is not None:
            ke.session.close()
        distributed.shutdown()
