"""The slim network as a standalone file that needs only PyTorch to run.

    metadata = export_slim(dense_model, cfg, "slim.pt2", classes, mean, std, eval_resize)
    model = load_exported("slim.pt2")           # model.metadata: what was saved with it

The file is a `torch.export` program (`torch.export.save`; TorchScript is deprecated in current
PyTorch): the slim network of `cfg` (plain convs / BatchNorms / linears, the widths the fit counts
of the dense masks: ceil(s * c) of every input chunk c) holding the fit hypothesis of the dense
model (`extract_slim`), in eval mode, traced on CPU in float32 for inputs [N, 3, S, S] with any
batch size N and S = the image size. Loading it needs nothing from this project (see the README).
`load_exported` checks first that loading cannot run code, then wraps the program in a module that
accepts `.eval()` and checks the input size.

Metadata (JSON, saved inside the file as extra/ke_metadata.json): format, version, arch,
split_rate (the slim width factor), num_classes, class_names (index i <-> class_names[i]),
image_size, eval_resize, mean, std, dataset (--set and the --data folder), torch_version, plus
any `extra` entries the caller passes (e.g. the generation; for an embedding network
`task_metadata`: task "retrieval", output "embedding", embedding_size).
"""
import json
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from errors import UserError, one_line
from utils.pt2_archive import checked_archive
from utils.safe_files import FILE_MODE, replaced_when_written

METADATA_FILE = "ke_metadata.json"
MAX_IMAGE_PIXELS = 50_000_000            # --max_image_pixels' default
TASKS = ("classification", "retrieval")
FORMAT = "knowledge-evolution-slim"
VERSION = 1
# what loading and --evaluate read from the metadata, and the JSON type each must have
METADATA_TYPES = {"version": int, "num_classes": int, "class_names": list, "image_size": int,
                  "eval_resize": int, "mean": list, "std": list, "dataset": dict}
METADATA_KINDS = {key: {int: "an integer", list: "a list", dict: "an object"}[kind]
                  for key, kind in METADATA_TYPES.items()}


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def build_slim(dense_model: nn.Module, cfg) -> nn.Module:
    """The slim network of `cfg` holding `dense_model`'s fit hypothesis: CPU, float32, eval."""
    from models.evolution import extract_slim  # imports the layers: only here
    from models.factory import get_model
    if cfg.split_mode != "kels":
        raise ValueError(f"only KELS models have a slim network; this one was split with "
                         f"--split_mode {cfg.split_mode}")
    slim = get_model(cfg, slim=True)
    extract_slim(slim, _unwrap(dense_model))
    return slim.float().eval()


def task_metadata(cfg) -> dict:
    """What the exported network outputs: with --task retrieval an L2-normalised embedding of
    `embedding_size` (its num_classes / class_names are the training classes of the loss, not
    outputs); nothing extra for a classifier."""
    if getattr(cfg, "task", "classification") != "retrieval":
        return {}
    return {"task": "retrieval", "output": "embedding", "embedding_size": int(cfg.embedding_size),
            "normalized": "L2"}


def export_slim(dense_model: nn.Module, cfg, out_path: str, class_names: Sequence,
                mean: Sequence[float], std: Sequence[float], eval_resize: int,
                extra: dict | None = None) -> dict:
    """Write the slim network of `dense_model` (a KELS model of `cfg`) to `out_path`.

    class_names: one per output (DataSplits.classes); mean, std, eval_resize: the evaluation
    preprocessing of the training data, recorded for users of the file. The dataset (--set and
    --data) is recorded too, so `--evaluate OUT` finds it. The file is written atomically
    (temporary file, then rename) with the usual permissions. Returns the metadata.
    """
    slim = build_slim(dense_model, cfg)
    num_classes = int(cfg.num_cls)
    class_names = list(class_names)
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
    size = int(cfg.image_size)
    metadata = {
        "format": FORMAT, "version": VERSION, "arch": cfg.arch,
        "split_rate": float(cfg.split_rate), "num_classes": num_classes,
        "class_names": [c if isinstance(c, (int, float, str)) else str(c) for c in class_names],
        "image_size": size, "eval_resize": int(eval_resize),
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "input": f"float32 [N, 3, {size}, {size}] RGB scaled to [0, 1], then (x - mean) / std",
        "dataset": {"set": cfg.set, "data": os.path.abspath(cfg.data)},
        "torch_version": torch.__version__, **(extra or {}),
    }
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(slim, (example,), dynamic_shapes=({0: batch},), strict=False)
        expected, got = slim(example), program.module()(example)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError("the exported program's logits differ from the slim model's "
                           f"(max difference {(got - expected).abs().max().item():.3g})")

    with replaced_when_written(out_path, suffix=".pt2") as tmp:
        torch.export.save(program, tmp, extra_files={METADATA_FILE: json.dumps(metadata)})
        os.chmod(tmp, FILE_MODE)
    return metadata


class ExportedModel(nn.Module):
    """An exported slim network, inference only: always in eval mode, no gradients.

    `metadata` holds the saved metadata; inputs must be [N, 3, S, S] with S = image_size.
    """

    def __init__(self, program_module: nn.Module, metadata: dict):
        super().__init__()
        self.program = program_module
        self.metadata = metadata
        self.class_names = metadata.get("class_names")
        self.image_size = metadata.get("image_size")
        for p in self.program.parameters():
            p.requires_grad_(False)
        self.training = False

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an exported slim model is for inference only (it was exported "
                               "in eval mode); rebuild it from a checkpoint to train")
        self.training = False                  # the program itself is fixed in eval mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"this model takes [N, 3, {s}, {s}] images, got {list(x.shape)}; "
                             f"resize to {self.metadata.get('eval_resize')} and centre-crop {s}")
        return self.program(x)


def _checked_metadata(path: str, text, max_pixels: int = MAX_IMAGE_PIXELS) -> dict:
    """The saved metadata, every key the tools read present with its type; UserError otherwise."""
    try:
        metadata = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise UserError(f"{path} has no slim-model metadata; it was not written by --export_slim")
    for key, kinds in METADATA_TYPES.items():
        value = metadata.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise UserError(f"{path}: its extra/{METADATA_FILE} has {key} = "
                            f"{json.dumps(value)[:40]}, not {METADATA_KINDS[key]}; the file is "
                            "damaged or was not written by --export_slim")
    pixels = max(metadata["image_size"], metadata["eval_resize"]) ** 2
    if pixels > max_pixels:
        raise UserError(f"{path}: its extra/{METADATA_FILE} asks for {metadata['image_size']}px "
                        f"inputs resized from {metadata['eval_resize']}px, above the pixel limit "
                        f"({max_pixels}); the file is damaged or was not written by --export_slim")
    if metadata.get("task", "classification") not in TASKS:
        raise UserError(f"{path}: its extra/{METADATA_FILE} names the task "
                        f"{json.dumps(metadata.get('task'))[:40]}, which this toolkit does not "
                        f"have ({', '.join(TASKS)}); the file is damaged or was not written by "
                        "--export_slim")
    names, dataset = metadata["class_names"], metadata["dataset"]
    if len(names) != metadata["num_classes"] or metadata["image_size"] < 1 or \
            not all(isinstance(dataset.get(k), str) for k in ("set", "data")):
        raise UserError(f"{path}: its extra/{METADATA_FILE} does not describe a model "
                        "(class_names, num_classes, image_size or dataset); the file is damaged "
                        "or was not written by --export_slim")
    return metadata


def load_exported(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> ExportedModel:
    """The slim network in a file written by `export_slim`: an eval-mode, CPU, inference-only
    module whose `metadata` holds what was saved with it. The file is checked first so that
    loading it cannot run code; anything else is a UserError naming the problem."""
    if not os.path.isfile(path):
        raise UserError(f"exported model {path} does not exist; give the .pt2 file written by "
                        "--export_slim")
    archive, metadata_text = checked_archive(path, f"extra/{METADATA_FILE}")
    metadata = _checked_metadata(path, metadata_text, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(archive)
            module = program.module()
    except (Exception, RecursionError) as error:
        raise UserError(f"{path} is not a readable torch.export file ({type(error).__name__}: "
                        f"{one_line(error)})") from None
    return ExportedModel(module, metadata)
