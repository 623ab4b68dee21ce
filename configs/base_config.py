"""Command-line flags of `train_KE_cls.py`. Defaults are the paper's Flowers-102 recipe.

`Config().parse(argv)` returns the flags without touching the disk, and `resolve` completes
them once the data is read. Nothing here imports torch, so `--help` and flag errors are quick.
"""
import argparse
import json
import os
import re
import sys

import constants
import methods
from argtypes import (
    METHOD,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    RATE,
    RECIPE,
    ROLES_KEY,
    RUN,
    SMOOTHING,
    RoleContainer,
    roles_record,
)
from argtypes import number as _number
from configs import comparison_data, config_file
from configs.recipes import RECIPES, apply_recipe
from configs.suggest import with_suggestion
from data.augment import AUGMENTS
from data.catalog import CATALOG
from errors import UserError
from layers import EVOLVE_MODES, SPLIT_MODES
from models.names import (
    BN_TYPES,
    CONV_TYPES,
    GRAPH_DERIVED,
    HAND_WRITTEN,
    INITS,
    LINEAR_TYPES,
    NONLINEARITIES,
)
from utils import AMP_MODES, LR_POLICIES, ML_LOSSES, OPTIMIZERS


class OneLineParser(RoleContainer, argparse.ArgumentParser):
    """Reports a bad flag as a single line (no usage block), with the closest valid names of a
    mistyped flag or choice, and exits with status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {with_suggestion(self, message)}\n")


class HelpWithDefaults(argparse.HelpFormatter):
    """Adds "(default: ...)" to a flag's help that does not state its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0:
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"


class ZeroOne(argparse.Action):
    """An on/off flag that also takes the reference's integer: --X, --X 1, --X 0, --no-X."""

    VALUES = {"1": True, "0": False, "on": True, "off": False, "true": True, "false": False}

    def __init__(self, option_strings, dest, default=None, help=None, **kwargs):
        negative = [f"--no-{o[2:]}" for o in option_strings if o.startswith("--")]
        super().__init__(list(option_strings) + negative, dest, nargs="?", default=default,
                         help=help, metavar="0|1")

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"argument {option_string}: takes no value, got {values!r}")
            setattr(namespace, self.dest, False)
            return
        if values is not None and str(values).lower() not in self.VALUES:
            parser.error(f"argument {option_string}: expected 0 or 1 (or no value for on), "
                         f"got {values!r}")
        setattr(namespace, self.dest, True if values is None else self.VALUES[str(values).lower()])


def byte_size(text: str) -> int:
    """argparse type: a number of bytes, plain or with a binary suffix (512M, 6G, 1.5T)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 0, 800M or 6G, got {text!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))


ERASING = _number(float, 0.0, 1.0, high_open=True, what="a probability in [0, 1)")


def _or_off(parse):
    """argparse type: `parse(text)`, or None for "off"."""
    def parse_or_off(text):
        return None if str(text).lower() == "off" else parse(text)
    return parse_or_off


ALPHA_OR_OFF = _or_off(_number(float, 0.0, low_open=True, what="an alpha > 0, or off"))
DECAY_OR_OFF = _or_off(_number(float, 0.0, 1.0, low_open=True, high_open=True,
                               what="a decay in (0, 1), or off"))

SEED_LIMIT = 2**32 - 1  # derived seeds (seed + generation, per-epoch generators) stay in range
SEED = _number(int, 0, SEED_LIMIT, what=f"an integer in [0, {SEED_LIMIT}]")
MAX_IMAGE_PIXELS = 2**31 - 1             # PIL's own ceiling for one image
# a batch of 2^16 images is beyond every GPU at any supported size; a larger number only overflows
MAX_BATCH_SIZE = 2**16
# 4096px crops: 16x the pixels of the 1024px crops used at most in practice; one float32 batch of
# 32 such crops is already 6 GB before the first layer
MAX_IMAGE_SIZE = 4096
# the file-name limit of common file systems (NAME_MAX), and what the longest file the experiment
# derives from --name adds to it: the results CSV's temporary ".<name>.csv.<32 hex>.tmp"
NAME_MAX = 255
LONGEST_DERIVED_EXTRA = len(".") + len(".csv.") + 32 + len(".tmp")
# Files of an experiment folder that --log_file must not name (it is opened for appending), and
# the folders and files the run writes there itself.
RESERVED_FILES = ("settings.json", ".lock", "logs", "compute.json", "val_split.csv",
                  "noisy_labels.csv")
RESERVED_PATTERNS = (r"gen_\d+", r"summary(\..*)?")


def _toolkit_temporary(name: str) -> bool:
    """A name of the kind the toolkit gives its temporary files (removed when a run reopens
    the folder): `.tmp-*` and the results CSV's older `.<name>.csv.<hex>.tmp`."""
    from utils.safe_files import TEMPORARY_PREFIX, is_temporary
    return name.startswith(TEMPORARY_PREFIX) or is_temporary(name)


def _file_name(what: str):
    """argparse type: one plain file or folder name (no separators, not '.' or '..')."""
    def parse(text):
        bad = (not text or text in (".", "..") or "/" in text or os.sep in text or "\0" in text
               or (os.altsep and os.altsep in text))
        if bad:
            raise argparse.ArgumentTypeError(
                f"{what} must be a single name without '/' (and not '.' or '..'), got {text!r}; "
                f"it names an entry inside the experiments folder")
        return text
    return parse


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                        # not on Linux
        return os.cpu_count() or 1


DEFAULT_WORKERS = min(8, _usable_cores())
MAX_WORKERS = 4 * _usable_cores()


def _check_export_output(out: str, fail):
    """--export_slim OUT names a file ending in .pt2 (what --evaluate recognises), not a folder."""
    if not out.endswith(".pt2") or out.endswith("/") or os.path.basename(out) == ".pt2":
        fail(f"argument --export_slim: OUT must be a file name ending in .pt2, got {out!r}; "
             f"e.g. slim.pt2")

TASKS = ("classification", "retrieval")
# --task retrieval: the Proxy-Anchor recipe (Kim et al., CVPR 2020, its train.py), used for the
# flags not given on the command line
RETRIEVAL_DEFAULTS = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "batch_size": 150,
                      "epochs": 60, "warmup_length": 0, "test_interval": 1,
                      "lr_policy": "multistep_lr"}
# flags that only --task retrieval reads (argparse destinations -> flag)
RETRIEVAL_FLAGS = {"embedding_size": "--embedding_size", "ml_loss": "--ml_loss",
                   "alpha": "--alpha", "margin": "--margin",
                   "samples_per_class": "--samples_per_class", "warm": "--warm",
                   "bn_freeze": "--bn_freeze", "lr_decay_step": "--lr-decay-step",
                   "lr_decay_gamma": "--lr-decay-gamma"}

# Flags of the reference implementation that mean nothing for (or are done otherwise in) this
# toolkit's classification training: each is refused with what to use instead.
REFERENCE_ONLY_FLAGS = {
    "--start-epoch": "continue a stopped run with --resume",
    "--world_size": "launch one process per GPU with torchrun --nproc_per_node N",
    "--slim_factor": "the slim width is the --split_rate; write it with --export_slim",
    "--slimming_factor": "the slim width is the --split_rate; write it with --export_slim",
    "--reset_mask": "use --split_mode wels --reset_hypothesis to draw new masks",
    "--emb_dim": "use --task retrieval --embedding_size N",
    "--l2-norm": "--task retrieval always L2-normalises the embeddings",
    "--freeze_weights": "not part of Knowledge Evolution training",
    "--first_layer_dense": "use --conv_type DenseConv for unsplit layers",
    "--last_layer_dense": "use --linear_type DenseLinear for an unsplit classifier",
    "--first-layer-type": "use --conv_type",
    "--early_stopping": "the best-validation checkpoint is kept as model_best.pth",
    "--trainer": "there is one training loop",
}


class _Refused(argparse.Action):
    """A flag of the reference that this toolkit does not take: stops with what to use instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"argument {option_string}: a flag of the reference implementation that "
                     f"this toolkit does not use; {REFERENCE_ONLY_FLAGS[option_string]}")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="train_KE_cls.py", allow_abbrev=False, formatter_class=HelpWithDefaults,
                      description="Knowledge Evolution: train a network over generations, "
                                  "re-initialising its reset hypothesis at each one.")

    g = p.add_argument_group("data")
    g.add_argument("--data", role=RUN, default=None, metavar="DIR",
                   help="datasets directory (default: constants.datasets_dir)")
    g.add_argument("--set", role=RECIPE, default="Flower102Pytorch", choices=sorted(CATALOG),
                   help="dataset (default: %(default)s)")
    g.add_argument("--image_size", role=RECIPE, default=224, type=_number(
                       int, 1, MAX_IMAGE_SIZE, what=f"an integer in [1, {MAX_IMAGE_SIZE}]"),
                   help="crop size; evaluation resizes to round(size*256/224) first (default: 224)")
    g.add_argument("-t", "--num_threads", role=RUN, default=DEFAULT_WORKERS, type=NON_NEGATIVE_INT,
                   metavar="N", help="data-loading workers (default: the usable CPU cores, at most "
                                     f"8; {DEFAULT_WORKERS} here); they do not change results")
    g.add_argument("--max_image_pixels", role=RUN,
                   default=50_000_000, type=_number(      # 7071 x 7071
                       int, 1, MAX_IMAGE_PIXELS, what=f"an integer in [1, {MAX_IMAGE_PIXELS}]"),
                   metavar="N", help="refuse images with more pixels than N, read from the file's "
                                     "header before any decoding: a small file can decode to "
                                     "gigabytes (default: 50000000)")
    g.add_argument("--skip_bad_images", role=RECIPE, action="store_true",
                   help="drop the rows whose image is missing or unreadable (logged with a "
                        "count) instead of stopping with an error")
    g.add_argument("--allow_outside_paths", role=RUN, action="store_true",
                   help="accept list rows whose file_name is absolute or leaves the image "
                        "folder with '..' (refused by default)")

    g = p.add_argument_group("model and split")
    g.add_argument("-a", "--arch", role=RECIPE,
                   default="Split_ResNet18", choices=HAND_WRITTEN + GRAPH_DERIVED,
                   metavar="ARCH", help=f"one of {', '.join(HAND_WRITTEN)} (default: %(default)s), "
                   "or Split_<name> for a torchvision CNN split from its torch.fx graph "
                   f"({', '.join(n[6:] for n in GRAPH_DERIVED)}); ConvNeXt and ShuffleNet mix "
                   "channels, so they train with KE but have no slim network (no slim rows)")
    g.add_argument("--split_rate", role=METHOD, default=0.5, type=RATE,
                   help="fraction of each layer in the fit hypothesis, in (0, 1] (default: 0.5)")
    g.add_argument("--bias_split_rate", role=METHOD, default=None, type=RATE,
                   help="fit fraction of non-classifier biases (default: --split_rate)")
    g.add_argument("--split_mode", role=METHOD, default="kels", choices=SPLIT_MODES,
                   help="kels: kernel-level (has a slim network); wels: weight-level random")
    g.add_argument("--evolve_mode", role=METHOD, default="rand", choices=EVOLVE_MODES,
                   help="re-draw the reset hypothesis randomly or set it to zero (default: rand)")
    g.add_argument("--reset_hypothesis", role=METHOD, action="store_true",
                   help="WELS only: draw a new mask every generation")
    g.add_argument("--conv_type", role=METHOD, default="SplitConv", choices=CONV_TYPES,
                   help="convolution layers: SplitConv (split into fit and reset hypotheses) or "
                        "DenseConv (not split) (default: %(default)s)")
    g.add_argument("--bn_type", role=METHOD, default="SplitBatchNorm", choices=BN_TYPES,
                   help="BatchNorm layers, split with their convolution or not (default: "
                        "%(default)s)")
    g.add_argument("--linear_type", role=METHOD, default="SplitLinear", choices=LINEAR_TYPES,
                   help="the classifier: SplitLinear (split) or DenseLinear (not split) "
                        "(default: %(default)s)")
    g.add_argument("--init", role=RECIPE, default="kaiming_normal", choices=INITS,
                   help="conv weight initialisation (default: %(default)s)")
    g.add_argument("--mode", role=RECIPE, default="fan_in", choices=("fan_in", "fan_out"),
                   help="kaiming initialisation: scale by the fan-in or the fan-out of each layer "
                        "(default: %(default)s)")
    g.add_argument("--nonlinearity", role=RECIPE, default="relu", choices=NONLINEARITIES,
                   help="the nonlinearity whose gain the initialisation uses (default: "
                        "%(default)s)")
    g.add_argument("--scale-fan", role=METHOD, dest="scale_fan", action="store_true",
                   help="scale the init fan by the split rate")
    g.add_argument("--pretrained", role=RECIPE, default=None, metavar="PATH",
                   help="start generation 0 from these weights; as in the reference, the reset "
                        "hypothesis is then re-drawn (the fit hypothesis keeps the file's weights)")
    g.add_argument("--keep_pretrained_reset", role=METHOD, action="store_true",
                   help="with --pretrained: keep every pretrained weight at generation 0 (the "
                        "reset hypothesis too) instead of re-drawing the reset hypothesis")

    g = p.add_argument_group("training")
    g.add_argument("--num_generations", role=RECIPE, default=5, type=POSITIVE_INT,
                   help="number of generations G (default: 5)")
    g.add_argument("--epochs", role=RECIPE, default=200, type=POSITIVE_INT,
                   help="epochs per generation E (default: 200)")
    g.add_argument("-b", "--batch_size", role=RECIPE, default=32, type=_number(
                       int, 1, MAX_BATCH_SIZE, what=f"an integer in [1, {MAX_BATCH_SIZE}]"),
                   help="total mini-batch size across all processes (default: 32)")
    g.add_argument("--lr", "--learning-rate", role=RECIPE,
                   dest="lr", default=0.256, type=POSITIVE_FLOAT,
                   help="initial learning rate (default: 0.256)")
    g.add_argument("--lr_policy", role=RECIPE, default="cosine_lr", choices=LR_POLICIES,
                   help="schedule of each generation (default: %(default)s); long_cosine_lr: "
                        "one warm-up and one cosine decay over all generations (the long baseline: "
                        "see --forget)")
    g.add_argument("--warmup_length", role=RECIPE, default=5, type=NON_NEGATIVE_INT,
                   help="linear warm-up epochs, restarted every generation (default: 5)")
    g.add_argument("--multistep-lr-adjust", role=RECIPE, dest="multistep_lr_adjust", default=30,
                   type=POSITIVE_INT, help="multistep_lr: epochs between drops (default: 30)")
    g.add_argument("--multistep-lr-gamma", role=RECIPE, dest="multistep_lr_gamma", default=0.1,
                   type=POSITIVE_FLOAT, help="multistep_lr: factor at each drop (default: 0.1)")
    g.add_argument("--optimizer", role=RECIPE, default="sgd", choices=OPTIMIZERS,
                   help="optimiser of every generation, made anew at its start (default: "
                        "%(default)s)")
    g.add_argument("--momentum", role=RECIPE, default=0.9, type=NON_NEGATIVE_FLOAT,
                   help="sgd momentum, a factor >= 0 (default: 0.9)")
    g.add_argument("--wd", "--weight_decay", role=RECIPE, dest="weight_decay", default=None,
                   type=NON_NEGATIVE_FLOAT,
                   help="weight decay (default, as in the reference: 5e-4 for VGG, 0 for adam, "
                        "1e-4 otherwise)")
    g.add_argument("--no-bn-decay", role=RECIPE, dest="no_bn_decay", action="store_true",
                   help="no weight decay on BatchNorm parameters and biases")
    g.add_argument("--label_smoothing", role=RECIPE, default=0.1, type=SMOOTHING,
                   help="label smoothing of the cross-entropy, 0 disables (default: 0.1)")
    g.add_argument("--cs_kd", role=RECIPE, action="store_true",
                   help="class-wise self-knowledge distillation: batches of same-class pairs, "
                        "loss + 3 x KL at temperature 4")
    g.add_argument("--seed", role=RUN, default=None, type=SEED,
                   help="random seed in [0, 2^32) (default: drawn at random and recorded in "
                        "settings.json)")

    g = p.add_argument_group("regularisation (the same for every method of a comparison)")
    g.add_argument("--recipe", default=None, choices=sorted(RECIPES), role=RECIPE,
                   help="a named group of defaults (configs/recipes.py): ke_paper (the "
                        "reference's, as with no recipe) or strong (TrivialAugment, random "
                        "erasing, mixup/cutmix, EMA, 300 epochs); flags on the command line and "
                        "in --config_file win over it (default: none)")
    g.add_argument("--augment", default="none", choices=AUGMENTS, role=RECIPE,
                   help="automatic augmentation of each training image after its crop and flip "
                        "(torchvision.transforms.v2) (default: %(default)s)")
    g.add_argument("--random_erasing", default=0.0, type=ERASING, metavar="P", role=RECIPE,
                   help="erase a random rectangle of each training image with probability P, "
                        "filled with the mean colour (v2.RandomErasing) (default: 0, off)")
    g.add_argument("--mixup", default=None, type=ALPHA_OR_OFF, metavar="ALPHA", role=RECIPE,
                   help="mix pairs of training images and their labels, lambda ~ Beta(ALPHA, "
                        "ALPHA) (v2.MixUp); off disables (default: off)")
    g.add_argument("--cutmix", default=None, type=ALPHA_OR_OFF, metavar="ALPHA", role=RECIPE,
                   help="paste a box of another training image, area ~ Beta(ALPHA, ALPHA) "
                        "(v2.CutMix); with --mixup each batch takes one of the two; off disables "
                        "(default: off)")
    g.add_argument("--ema", default=None, type=DECAY_OR_OFF, metavar="DECAY", role=RECIPE,
                   help="also keep an exponential moving average of the weights and buffers, "
                        "updated every step (torch.optim.swa_utils.AveragedModel), restarted "
                        "every generation; its test results are the \"ema\" rows; the method "
                        "forgets from the raw weights; off disables (default: off)")

    methods.add_flags(p)
    comparison_data.add_flags(p)

    g = p.add_argument_group("metric learning (--task retrieval)")
    g.add_argument("--task", role=RECIPE, default="classification", choices=TASKS,
                   help="retrieval: zero-shot metric learning (first half of the classes trains, "
                        "the second half is searched: Recall@K and NMI); its defaults follow the "
                        "Proxy-Anchor recipe (AdamW, lr 1e-4, batch 150, 60 epochs, step "
                        "schedule) (default: %(default)s)")
    g.add_argument("--embedding_size", role=RECIPE, default=512, type=POSITIVE_INT,
                   help="width of the L2-normalised embedding that replaces the classifier "
                        "(default: 512)")
    g.add_argument("--ml_loss", role=RECIPE,
                   default="proxy_anchor", choices=ML_LOSSES, type=str.lower,
                   help="metric-learning loss of pytorch-metric-learning, any case (the "
                        "reference writes Proxy_Anchor) (default: %(default)s)")
    g.add_argument("--alpha", role=RECIPE, default=32.0, type=POSITIVE_FLOAT,
                   help="proxy_anchor: the scale alpha (default: 32)")
    g.add_argument("--margin", role=RECIPE, default=0.1, type=NON_NEGATIVE_FLOAT,
                   help="proxy_anchor: the margin delta (default: 0.1)")
    g.add_argument("--samples_per_class", role=RECIPE, default=None, type=POSITIVE_INT, metavar="M",
                   help="batches of M images of each of batch/M classes (pytorch-metric-"
                        "learning's MPerClassSampler; default: plain shuffling)")
    g.add_argument("--warm", role=RECIPE, default=1, type=NON_NEGATIVE_INT, metavar="E",
                   help="the first E epochs of every generation train only the embedding layer "
                        "and the proxies (default: 1)")
    g.add_argument("--bn_freeze", role=RECIPE, default=True, action=ZeroOne,
                   help="BatchNorm in eval mode while training: --bn_freeze 1 or 0 as the "
                        "reference writes it, or --bn_freeze / --no-bn_freeze (default: 1, on, "
                        "as the recipe)")
    g.add_argument("--lr-decay-step", role=RECIPE,
                   dest="lr_decay_step", default=10, type=POSITIVE_INT,
                   help="step schedule: epochs between decays (default: 10)")
    g.add_argument("--lr-decay-gamma", role=RECIPE,
                   dest="lr_decay_gamma", default=0.5, type=POSITIVE_FLOAT,
                   help="step schedule: factor at each decay (default: 0.5)")

    g = p.add_argument_group("device")
    g.add_argument("--gpu", role=RUN, default=None, type=NON_NEGATIVE_INT,
                   help="CUDA device index (default: 0 when CUDA is present, else the CPU; "
                        "under torchrun each process uses its LOCAL_RANK)")
    g.add_argument("--sync_bn", role=RECIPE, action="store_true",
                   help="under torchrun: synchronise BatchNorm statistics across processes")

    g = p.add_argument_group("performance")
    g.add_argument("--amp", role=RECIPE, default="none", choices=AMP_MODES,
                   help="mixed precision: bf16 autocast (CPU or GPU), fp16 autocast with a "
                        "gradient scaler (GPU only); weights stay float32 (default: none)")
    g.add_argument("--channels_last", role=RUN, action="store_true",
                   help="channels-last memory format for the model and its inputs (faster "
                        "convolutions on recent GPUs, mostly with --amp)")
    g.add_argument("--compile", role=RUN, action="store_true",
                   help="torch.compile the model (slow first epoch; off by default)")
    g.add_argument("--cache_images", role=RUN, action="store_true",
                   help="always decode every image once and keep it, resized, as uint8 in "
                        "shared memory that all data-loading workers read (without it, only "
                        "when the decoded splits fit under --cache_budget)")
    g.add_argument("--cache_budget", role=RUN, default=None, type=byte_size, metavar="SIZE",
                   help="largest image cache taken by default, in bytes or with a suffix "
                        "(800M, 6G); 0: decode per sample unless --cache_images (default: a "
                        "quarter of the RAM)")
    g.add_argument("--batched_crops", role=RUN, default="auto", choices=["auto", "on", "off"],
                   help="random resized crop, flip and normalisation of cached training images "
                        "as a few tensor operations per batch on the training device instead of "
                        "per image in the data loader; same crop draws, the resize a box filter "
                        "within a grey level of torch's (auto: on CUDA when the training images "
                        "are cached; on the CPU the per-image path is faster)")
    g.add_argument("--cache_short_side", role=RUN, default=None, type=POSITIVE_INT, metavar="N",
                   help="with the image cache: shorter side of the cached training images; "
                        "smaller originals are kept as they are (default: 2 x --image_size, "
                        "so every random crop covering a quarter of the image or more is "
                        "still downscaled, never enlarged, to --image_size)")
    g.add_argument("--eval_batch_size", role=RUN, default=128, type=POSITIVE_INT, metavar="N",
                   help="total batch of the validation and test passes; it does not change "
                        "results (default: %(default)s)")

    g = p.add_argument_group("outputs")
    g.add_argument(config_file.OPTION, role=RUN, default=None, metavar="FILE.yaml",
                   help="flag values from a YAML file whose keys are flag names (lr: 0.1, "
                        "arch: Split_ResNet18, cs_kd: true), as a sweep's --grid_file fixed part; "
                        "flags on the command line win; its path, sha256 and every resolved "
                        "value go to settings.json (default: none)")
    g.add_argument("--name", role=RUN, default=None, type=_file_name("--name"),
                   help="experiment name, the folder under --log-dir (default: built from the "
                        "settings)")
    g.add_argument("--log-dir", role=RUN, dest="log_dir", default=None, metavar="DIR",
                   help="checkpoints directory (default: constants.checkpoints_dir)")
    g.add_argument("--log_file", role=RUN, default="train_log.txt", type=_file_name("--log_file"),
                   help="log file name in the experiment folder (default: %(default)s)")
    g.add_argument("--test_interval", role=RUN, default=10, type=POSITIVE_INT,
                   help="validate every N epochs and at the last one (default: 10)")
    g.add_argument("--keep_checkpoints", role=RUN,
                   default="reference", choices=("reference", "last"),
                   help="reference: keep the checkpoints of generation 0 and of the last 4 "
                        "generations, as the reference does; last: only the last finished "
                        "generation's, which is all --resume needs (default: reference)")
    g.add_argument("--save_every", role=RUN, default=-1, type=int,
                   help="also keep a checkpoint every N epochs (default: -1, never)")
    g.add_argument("--save_every_minutes", role=RUN,
                   default=10.0, type=NON_NEGATIVE_FLOAT, metavar="M",
                   help="write the resume state after the first epoch that ends M minutes or "
                        "more after the last one written (0: after every epoch); it is always "
                        "written at the end of a generation and on a stop signal (default: 10)")
    g.add_argument("-p", "--print-freq", role=RUN,
                   dest="print_freq", default=10000, type=POSITIVE_INT,
                   help="log a line every N batches (default: 10000)")
    g.add_argument("--evaluate", role=RUN, default=None, metavar="CKPT",
                   help="no training: evaluate a checkpoint (or an exported slim .pt2 file) on "
                        "the validation and test splits")
    g.add_argument("--export_slim", role=RUN, nargs=2, default=None, metavar=("CKPT", "OUT"),
                   help="no training: write the slim network of checkpoint CKPT to OUT (.pt2), "
                        "loadable with utils.export.load_exported")
    g.add_argument("--resume", role=RUN, nargs="?", const="latest", default=None, metavar="PATH",
                   help="continue the experiment named by --name where it stopped; with a "
                        "path, continue from that checkpoint")
    for flag in REFERENCE_ONLY_FLAGS:
        p.add_argument(flag, role=RUN, nargs="?", action=_Refused, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    return p


def settings_record(cfg) -> dict:
    """What settings.json holds: every resolved value, and the role of every flag (the report
    groups runs by their method and recipe settings)."""
    return dict(vars(cfg), **{ROLES_KEY: roles_record(build_parser())})


def default_name(cfg) -> str:
    if cfg.task == "retrieval":
        return (f"SPLT_RET_{cfg.set}_{cfg.arch}_{cfg.ml_loss}_emb{cfg.embedding_size}"
                f"_k{cfg.split_rate}_G{cfg.num_generations}_e{cfg.epochs}_ev{cfg.evolve_mode}"
                f"_sm{cfg.split_mode}")
    return (f"SPLT_CLS_{cfg.set}_{cfg.arch}_cskd{cfg.cs_kd}_smth{cfg.label_smoothing > 0}"
            f"_k{cfg.split_rate}_G{cfg.num_generations}_e{cfg.epochs}_ev{cfg.evolve_mode}"
            f"_hReset{cfg.reset_hypothesis}_sm{cfg.split_mode}" + methods.name_part(cfg)
            + regularisation_name_part(cfg))


def regularisation_name_part(cfg) -> str:
    """What the default name adds for regularisation flags away from their defaults ("" when
    every one is at its default, so names of such runs stay as they were)."""
    parts = [("", cfg.augment if cfg.augment != "none" else None),
             ("re", cfg.random_erasing or None), ("mix", cfg.mixup), ("cut", cfg.cutmix),
             ("ema", cfg.ema)]
    return "".join(f"_{prefix}{value:g}" if isinstance(value, float) else f"_{prefix}{value}"
                   for prefix, value in parts if value is not None)


def check_combinations(cfg, fail):
    """Rules between flags, shared by the command line and a resumed run's settings.json;
    `fail(message)` reports a violation."""
    if cfg.reset_hypothesis and cfg.split_mode != "wels":
        fail("argument --reset_hypothesis: needs --split_mode wels (KELS masks are fixed by the "
             "split rate)")
    if cfg.batch_size < 2:
        fail("argument -b/--batch_size: BatchNorm needs at least 2 images per batch; use 2 or more")
    if cfg.cs_kd and (cfg.batch_size % 2 or cfg.batch_size < 4):
        fail(f"argument --cs_kd: needs an even --batch_size of at least 4 (pairs; each of the "
             f"two passes runs BatchNorm on half the batch), got {cfg.batch_size}")
    methods.check(cfg, fail)
    check_regularisation(cfg, fail)
    if cfg.keep_pretrained_reset and not cfg.pretrained:
        fail("argument --keep_pretrained_reset: needs --pretrained PATH")
    check_retrieval(cfg, fail)
    comparison_data.check(cfg, fail)
    if cfg.name and len(cfg.name) + LONGEST_DERIVED_EXTRA > NAME_MAX:
        fail(f"argument --name: {len(cfg.name)} characters is too long; the experiment's files "
             f"add up to {LONGEST_DERIVED_EXTRA} more and a file name holds {NAME_MAX}: use at "
             f"most {NAME_MAX - LONGEST_DERIVED_EXTRA}")
    if cfg.log_file and (cfg.log_file in RESERVED_FILES + (f"{cfg.name}.csv",) or
                         any(re.fullmatch(pattern, cfg.log_file) for pattern in RESERVED_PATTERNS)
                         or _toolkit_temporary(cfg.log_file)):
        fail(f"argument --log_file: {cfg.log_file} is a file of the experiment itself; choose "
             f"another name (default: train_log.txt)")


def check_regularisation(cfg, fail):
    """Per-image augmentation runs after the crop, in the loader; mixing images needs a
    classifier trained on single images with class targets."""
    augmenting = getattr(cfg, "augment", "none") != "none" or getattr(cfg, "random_erasing", 0)
    if augmenting and getattr(cfg, "batched_crops", "auto") == "on":
        fail("argument --batched_crops: on crops on the device, after the loader, where "
             "--augment/--random_erasing cannot follow the crop; use --batched_crops auto")
    mixing = [flag for flag in ("mixup", "cutmix") if getattr(cfg, flag, None) is not None]
    if not mixing:
        return
    flag = mixing[0]
    drop = (f"add --{flag} off (--recipe {cfg.recipe} sets it)"
            if getattr(cfg, "recipe", None) and flag not in getattr(cfg, "given_flags", ())
            else f"drop --{flag}")
    if cfg.cs_kd:
        fail(f"argument --{flag}: CS-KD distils between two images of one class, which mixing "
             f"would blend with other classes; {drop} or --cs_kd")
    if getattr(cfg, "task", "classification") == "retrieval":
        fail(f"argument --{flag}: --task retrieval learns an embedding from class labels, not "
             f"mixed targets; {drop}")


MAX_EMBEDDING = 1 << 16         # --embedding_size: a linear layer beyond it would not fit memory


def check_retrieval(cfg, fail):
    """The rules of --task retrieval and of its flags."""
    task = getattr(cfg, "task", "classification")
    if task != "retrieval":
        given = [flag for dest, flag in RETRIEVAL_FLAGS.items()
                 if dest in getattr(cfg, "given_flags", ())]
        if given:
            fail(f"argument {given[0]}: a metric-learning flag; it needs --task retrieval")
        return
    if cfg.cs_kd:
        fail("argument --cs_kd: class-wise distillation needs a classifier; --task retrieval "
             "trains an embedding, drop --cs_kd")
    if cfg.embedding_size > MAX_EMBEDDING:
        fail(f"argument --embedding_size: {cfg.embedding_size} is far above any embedding "
             f"(at most {MAX_EMBEDDING}); use a size such as 512")
    m = cfg.samples_per_class
    if m is not None and (cfg.batch_size % m or cfg.batch_size // m < 2):
        fail(f"argument --samples_per_class: {m} must divide --batch_size {cfg.batch_size} into "
             f"at least 2 classes per batch; use a batch that is a multiple of {2 * m}")
    if "lr_policy" in cfg.given_flags and cfg.lr_policy != "multistep_lr" and \
            {"lr_decay_step", "lr_decay_gamma"} & set(cfg.given_flags):
        fail(f"argument --lr-decay-step/--lr-decay-gamma: they set the step schedule, which "
             f"--lr_policy {cfg.lr_policy} replaces; drop one of them")


def apply_task_defaults(cfg, error):
    """--set *_RET implies --task retrieval; --task retrieval takes the Proxy-Anchor recipe for
    the flags not given, and its step schedule (--lr-decay-step/--lr-decay-gamma)."""
    implied = CATALOG[cfg.set].task
    if implied != "classification":
        if "task" in cfg.given_flags and cfg.task != implied:
            error(f"argument --task: --set {cfg.set} is a {implied} setup; drop --task or "
                  f"pass --task {implied}")
        cfg.task = implied
    if cfg.task != "retrieval":
        return
    for dest, value in RETRIEVAL_DEFAULTS.items():
        if dest not in cfg.given_flags:
            setattr(cfg, dest, value)
    if "multistep_lr_adjust" not in cfg.given_flags:
        cfg.multistep_lr_adjust = cfg.lr_decay_step
    if "multistep_lr_gamma" not in cfg.given_flags:
        cfg.multistep_lr_gamma = cfg.lr_decay_gamma


class Config:
    def __init__(self):
        self.parser = build_parser()

    def _given_flags(self, argv) -> set:
        """Destinations of the flags written on the command line (not left at their default)."""
        probe = build_parser()
        for action in probe._actions:
            action.default = argparse.SUPPRESS
        return set(vars(probe.parse_args(argv)))

    def parse(self, argv=None) -> argparse.Namespace:
        """The flags as given, with the defaults that need no data (paths, bias split rate,
        name, fixed image sizes). `resolve` completes it once the data is read."""
        argv = sys.argv[1:] if argv is None else list(argv)
        try:
            argv, from_file = config_file.expand(self.parser, argv)
        except UserError as error:
            self.parser.error(str(error))
        cfg = self.parser.parse_args(argv)
        if from_file:
            cfg.config_file = from_file["path"]
        cfg.config_sha256 = from_file["sha256"] if from_file else None
        cfg.given_flags = sorted(self._given_flags(argv))
        apply_recipe(cfg, set(cfg.given_flags))
        cfg.data = cfg.data or constants.datasets_dir
        cfg.log_dir = cfg.log_dir or constants.checkpoints_dir
        if cfg.bias_split_rate is None:
            cfg.bias_split_rate = cfg.split_rate
        cfg.num_cls = CATALOG[cfg.set].num_classes
        fixed_size = CATALOG[cfg.set].image_size          # CIFAR: the images are 32x32
        if fixed_size is not None and cfg.image_size != fixed_size:
            if "image_size" in cfg.given_flags:
                self.parser.error(f"argument --image_size: --set {cfg.set} has {fixed_size}x"
                                  f"{fixed_size} images; pass --image_size {fixed_size} or drop it")
            cfg.image_size = fixed_size
        apply_task_defaults(cfg, self.parser.error)
        if cfg.recipe is not None and cfg.task == "retrieval":
            self.parser.error(f"argument --recipe: {cfg.recipe} is a classification recipe; "
                              f"--task retrieval has its own defaults (the Proxy-Anchor recipe), "
                              f"drop --recipe")
        methods.choose(cfg, set(cfg.given_flags))
        methods.apply_defaults(cfg)
        cfg.name = cfg.name or default_name(cfg)
        check_combinations(cfg, self.parser.error)
        if cfg.num_threads > MAX_WORKERS:
            self.parser.error(f"argument -t/--num_threads: {cfg.num_threads} data-loading workers "
                              f"on {_usable_cores()} usable cores; use at most {MAX_WORKERS} "
                              f"(4 per core: more only adds processes and memory)")
        if cfg.export_slim:
            _check_export_output(cfg.export_slim[1], self.parser.error)
        return cfg


def config_warnings(cfg) -> list:
    """Settings that are valid but probably not what the user meant."""
    found = []
    if cfg.lr_policy in ("cosine_lr", "constant_lr") and 0 < cfg.epochs <= cfg.warmup_length:
        found.append(f"--epochs {cfg.epochs} <= --warmup_length {cfg.warmup_length}: the learning "
                     f"rate never leaves its linear warm-up; lower --warmup_length")
    return found


def default_weight_decay(arch: str, optimizer: str) -> float:
    """The reference recipe's weight decay: 5e-4 for VGG, none for adam, 1e-4 otherwise."""
    if optimizer == "adam":
        return 0.0
    return 5e-4 if arch.lower().startswith("split_vgg") else 1e-4


class RunConfig(argparse.Namespace):
    """A resolved configuration: read-only, so every part of a run sees the same values."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __setattr__(self, name, value):
        raise AttributeError(f"the resolved configuration is read-only (tried to set {name}); "
                             "change the flags or configs.base_config.resolve instead")


def resolve(cfg, num_classes: int, world_size: int, seed: int,
            validation_split: str = None) -> RunConfig:
    """The configuration a run uses, complete: the data's class count, the per-process batch,
    the seed, the label noise's seed and the architecture's defaults, and what validation read
    (`validation_split`: "val", "held_out" or "test", data.lists.DataSplits). Written as
    settings.json before training.

    Raises ValueError with a one-line message when the data or the world do not fit the flags.
    """
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch_size {cfg.batch_size} is the total batch of all processes and "
                         f"must divide evenly among {world_size}; use a multiple of {world_size}")
    process_batch = cfg.batch_size // world_size
    if process_batch < 2:
        raise ValueError(f"--batch_size {cfg.batch_size} over {world_size} processes gives each "
                         f"{process_batch} image per step, and BatchNorm needs at least 2; use "
                         f"--batch_size {2 * world_size} or more")
    if cfg.cs_kd and (process_batch % 2 or process_batch < 4):
        raise ValueError(f"--cs_kd needs an even batch of at least 4 in every process; use a "
                         f"--batch_size that is a multiple of {2 * world_size} and at least "
                         f"{4 * world_size}")
    m = getattr(cfg, "samples_per_class", None)
    if getattr(cfg, "task", "classification") == "retrieval" and m and process_batch % m:
        raise ValueError(f"--samples_per_class {m} must divide every process's batch of "
                         f"{process_batch}; use a --batch_size that is a multiple of "
                         f"{m * world_size}")
    values = dict(vars(cfg), num_cls=int(num_classes), process_batch_size=process_batch,
                  seed=seed if cfg.seed is None else cfg.seed)
    if cfg.weight_decay is None:
        values["weight_decay"] = default_weight_decay(cfg.arch, cfg.optimizer)
    if getattr(cfg, "noise_seed", None) is None:
        values["noise_seed"] = getattr(cfg, "split_seed", 0)
    if validation_split is not None:
        values["validation_split"] = validation_split
    return RunConfig(**values)


def _value_problem(action: argparse.Action, value):
    """Why a settings.json `value` would not be accepted for `action`'s flag, or None."""
    if value is None:
        return None if action.default is None else "a value is required"
    if action.nargs == 0 or isinstance(action, ZeroOne):    # on/off flags
        return None if isinstance(value, bool) else "expected true or false"
    if action.nargs is not None and action.nargs not in ("?",):
        return None                                        # multi-value flags: not settings
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"expected a single {'number' if action.type else 'string'}"
    if action.type is not None:
        try:
            converted = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError) as error:
            return str(error)
        if isinstance(value, float) and action.type is not float and converted != value:
            return f"expected an integer, got {value}"
        value = converted
    if action.choices is not None and value not in action.choices:
        return f"expected one of {', '.join(map(str, action.choices))}"
    return None


def given_over(saved: dict, given: argparse.Namespace, flags) -> argparse.Namespace:
    """`saved` settings with those of `flags` that were written on `given`'s command line."""
    values = dict(saved)
    for flag in flags:
        if flag == "given_flags" or flag in given.given_flags:
            values[flag] = getattr(given, flag)
    return argparse.Namespace(**values)


def settings_config(saved: dict, source: str, given=None, keep=()) -> argparse.Namespace:
    """The configuration recorded in an experiment's settings.json, checked by the same rules
    as the flags (a hand-edited file must not start a run the command line would refuse);
    the `keep` flags given on the command line (`given`) take precedence. Flags newer than the
    file take their defaults. Raises ValueError naming the bad entry."""
    if not isinstance(saved, dict):
        raise ValueError(f"{source} does not hold a JSON object of settings; restore it")
    parser = build_parser()
    values = vars(parser.parse_args([]))
    for action in parser._actions:
        if action.dest in saved and action.dest != "help" and not isinstance(action, _Refused):
            problem = _value_problem(action, saved[action.dest])
            if problem:
                raise ValueError(f"{source}: {action.dest} = {json.dumps(saved[action.dest])} is "
                                 f"not valid ({problem}); restore the value the run started with")
    values.update(saved)
    cfg = given_over(values, given, keep) if given is not None else argparse.Namespace(**values)

    def fail(message):
        raise ValueError(f"{source}: {message.replace('argument ', 'setting ')}; restore the "
                         f"values the run started with")
    check_combinations(cfg, fail)
    return cfg
