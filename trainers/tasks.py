"""What a generation's training depends on the task for, chosen once per run (`make_task`):
the loss, the optimizer's parameter groups, the epoch's frozen parameters, the evaluation and
the metric columns of the results rows.

Classification: cross-entropy, one optimizer group (or the --no-bn-decay pair), top-1/top-5.
Retrieval: a pytorch-metric-learning loss (utils/metric_loss.py; its proxies at 100 x --lr in
their own group), --warm (only the embedding layer and the proxies train in the first E epochs
of every generation), --bn_freeze, and Recall@K / NMI over the test classes
(utils/retrieval_metrics.py). Its metrics dict holds "top1" = R@1 (the model-selection score
and the results' Top 1 columns) and "top5" = R@4, besides "NMI" and every "R@K".
"""
import logging

import torch
import torch.nn as nn

from errors import UserError
from models.factory import is_retrieval
from trainers.engine import embed, evaluate
from utils.csv_utils import RESULT_COLUMNS, RETRIEVAL_RESULT_COLUMNS
from utils.csv_utils import RETRIEVAL_COLUMNS as COLUMNS
from utils.optim import build_optimizer

log = logging.getLogger("ke")


class Classification:
    columns = RESULT_COLUMNS            # of the results CSV
    logged = ()                         # metrics logged to TensorBoard besides loss/top1/top5
    freezes_parameters = False          # whether some epochs train only part of the model
    # what the "top1"/"top5" of an evaluation and of training are, in the log and TensorBoard
    labels = ("top1", "top5")
    train_labels = ("top1", "top5")
    evaluated = "val"                   # what the evaluation during training runs on
    tested = "test"                     # what a dense/slim row's evaluation is
    metric = "test top-1"               # the score of the final table
    loss_has_chance = True              # a uniform prediction's loss is ln C (run_checks)

    def __init__(self, cfg, num_classes: int, device, world):
        self.cfg, self.num_classes, self.device, self.world = cfg, num_classes, device, world
        self.loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def criterion(self, generation: int) -> nn.Module:
        return self.loss

    def forward(self):
        return None

    def train_sampler(self, splits, seed: int):
        """A sampler of its own for the training split, or None (the trainer's shuffling)."""
        return None

    def optimizer(self, model: nn.Module, criterion: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.cfg)

    def start_epoch(self, model: nn.Module, epoch: int):
        pass

    def evaluate(self, model, loader, criterion, description: str, precision, channels_last):
        return evaluate(model, loader, criterion, self.device, self.num_classes, description,
                        precision=precision, channels_last=channels_last)

    def describe(self, metrics: dict) -> str:
        return f"top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}"

    def row(self, metrics: dict) -> dict:
        """Extra results columns of an evaluation (none for classification)."""
        return {}

    def csv_row(self, row: dict) -> dict:
        """A results row, its columns named for this task."""
        return row

    def eval_text(self, current: dict, best: dict) -> str:
        """The log's words for an evaluation during training."""
        a, b = self.labels
        return (f"{self.evaluated} {a} {current['top1']:.2f} {b} {current['top5']:.2f} "
                f"(best {a} {best['top1']:.2f})")

    def eval_scalars(self, metrics: dict) -> dict:
        """TensorBoard tag -> value of an evaluation during training."""
        return {f"val/{key}": metrics[key] for key in ("loss", "top1", "top5")}

    def train_scalars(self, stats: dict) -> dict:
        return {f"train/{key}": stats[key] for key in ("loss", "top1", "top5")}

    def test_tag(self, kind: str) -> str:
        """TensorBoard tag of the dense/slim test score, per generation."""
        return f"test/{kind}_top1"


class Retrieval(Classification):
    """(pytorch-metric-learning, which takes most of a second to import, is imported by the
    methods: only retrieval runs pay for it.)"""
    columns = RETRIEVAL_RESULT_COLUMNS
    logged = ()
    labels = ("Recall@1", "Recall@4")
    train_labels = ("proxy top1", "proxy top5")     # the nearest proxy is the embedding's class
    evaluated = "test classes"          # no validation split: the recipe searches the test classes
    tested = "search of the test classes:"
    metric = "test-class Recall@1"
    loss_has_chance = False

    @property
    def freezes_parameters(self) -> bool:
        return self.cfg.warm > 0

    def criterion(self, generation: int) -> nn.Module:
        """A new loss every generation (its proxies drawn from the run's seed + generation): the
        --warm epochs that open each generation fit them to the inherited embedding."""
        from utils.metric_loss import build_loss
        generator = torch.Generator().manual_seed(self.cfg.seed + generation)
        return build_loss(self.cfg, self.num_classes, generator).to(self.device)

    def forward(self):
        from utils.metric_loss import metric_forward
        return metric_forward(self.cfg.bn_freeze, self.num_classes)

    def train_sampler(self, splits, seed: int):
        m = self.cfg.samples_per_class
        if m is None:
            return None
        from data.class_sampler import SeededMPerClassSampler
        return SeededMPerClassSampler(splits.train.targets, m, self.cfg.batch_size, seed,
                                      num_replicas=self.world.size, rank=self.world.rank)

    def optimizer(self, model: nn.Module, criterion: nn.Module) -> torch.optim.Optimizer:
        """Three groups, as the recipe: the backbone and the embedding layer at --lr, the
        proxies at 100 x --lr."""
        from utils.metric_loss import PROXY_LR_SCALE, proxies
        head = list(model.embedding_layer().parameters())
        head_ids = {id(p) for p in head}
        groups = [{"params": [p for p in model.parameters() if id(p) not in head_ids]},
                  {"params": head}]
        if proxies(criterion) is not None:
            groups.append({"params": [proxies(criterion)], "lr_scale": PROXY_LR_SCALE})
        return build_optimizer(model, self.cfg, groups)

    def start_epoch(self, model: nn.Module, epoch: int):
        """--warm E: in epochs 0..E-1 only the embedding layer (and the loss) train."""
        warm = epoch < self.cfg.warm
        head = {id(p) for p in model.embedding_layer().parameters()}
        for p in model.parameters():
            if id(p) not in head:
                p.requires_grad_(not warm)

    def evaluate(self, model, loader, criterion, description: str, precision, channels_last):
        embeddings, labels = gather_in_order(*embed(model, loader, self.device, description,
                                                    precision, channels_last), self.world)
        from utils.retrieval_metrics import retrieval_metrics
        metrics = retrieval_metrics(embeddings, labels)
        return {"loss": 0.0, "top1": metrics["R@1"], "top5": metrics["R@4"],
                "count": len(labels), **metrics}

    def describe(self, metrics: dict) -> str:
        return " ".join(
            f"{column.replace('R@', 'Recall@')} {metrics[column]:.2f}" for column in COLUMNS)

    def row(self, metrics: dict) -> dict:
        return {column: metrics[column] for column in COLUMNS}

    def csv_row(self, row: dict) -> dict:
        from utils.csv_utils import retrieval_row
        return retrieval_row(row)

    def eval_scalars(self, metrics: dict) -> dict:
        return {"test_classes/Recall@1": metrics["top1"], "test_classes/Recall@4": metrics["top5"],
                "test_classes/NMI": metrics["NMI"]}

    def train_scalars(self, stats: dict) -> dict:
        return {"train/loss": stats["loss"], "train/proxy_top1": stats["top1"],
                "train/proxy_top5": stats["top5"]}

    def test_tag(self, kind: str) -> str:
        return f"test_classes/{kind}_Recall@1"


def gather_in_order(embeddings, labels, world):
    """Every rank's shard (data.samplers.ShardSampler: rank r holds items r, r+W, ...) put back
    together in dataset order, on every rank."""
    if not world.distributed:
        return embeddings, labels
    shards = [None] * world.size
    torch.distributed.all_gather_object(shards, (embeddings, labels))
    total = sum(len(s[1]) for s in shards)
    all_embeddings = torch.zeros(total, embeddings.shape[1])
    all_labels = torch.zeros(total, dtype=labels.dtype)
    for rank, (e, lab) in enumerate(shards):
        all_embeddings[rank::world.size] = e
        all_labels[rank::world.size] = lab
    return all_embeddings, all_labels


def check_retrieval_data(cfg, splits):
    """Bad input the data shows: a class with fewer images than --samples_per_class, or too few
    classes to fill a batch with them."""
    m = cfg.samples_per_class
    if m is None:
        return
    counts = torch.bincount(torch.tensor(splits.train.targets), minlength=splits.num_classes)
    smallest = int(counts.argmin())
    if int(counts[smallest]) < m:
        raise UserError(f"--samples_per_class {m}: training class {splits.classes[smallest]} has "
                        f"only {int(counts[smallest])} image(s); use --samples_per_class "
                        f"{int(counts[smallest])} or less")
    if m * splits.num_classes < cfg.batch_size:
        raise UserError(f"--samples_per_class {m} x {splits.num_classes} training classes cannot "
                        f"fill a batch of {cfg.batch_size}; use --batch_size "
                        f"{m * splits.num_classes} or less")


def make_task(cfg, num_classes: int, device, world) -> Classification:
    return (Retrieval if is_retrieval(cfg) else Classification)(cfg, num_classes, device, world)
