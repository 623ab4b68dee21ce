"""Export the slim network as a standalone file that needs only PyTorch to run.

    metadata = export_slim(dense_model, cfg, "slim.pt2", class_names=splits.classes)
    model, metadata = load_exported("slim.pt2")        # utils.net_utils.load_exported: the model

The file is a `torch.export` program (`torch.export.save`; TorchScript is deprecated in current
PyTorch): the slim network of `cfg` (plain convs / BatchNorms / linears, every width
ceil(w * split_rate)) holding the fit hypothesis of the dense model (`extract_slim`), in eval mode,
traced on CPU in float32 for inputs [N, 3, S, S] with any batch size N and S = the image size.
Loading it imports nothing from this project. Without this project:

    import json, torch
    extra = {"ke_metadata.json": ""}
    model = torch.export.load("slim.pt2", extra_files=extra).module()
    meta = json.loads(extra["ke_metadata.json"])
    logits = model(images)          # float32 [N, 3, S, S], RGB in [0, 1] normalised by
                                    # meta["mean"], meta["std"]; eval resize meta["eval_resize"]

(such a module is always in eval mode: it has no `.eval()` / `.train()`; `load_exported` wraps it
in a module that accepts `.eval()` and checks the input size.)

Metadata (JSON, saved inside the file): format, version, arch, split_rate (the slim width
factor), num_classes, class_names (index i <-> class_names[i]), image_size, eval_resize, mean,
std, torch_version, plus any `extra` entries the caller passes (e.g. the generation).
"""
import json
import os
import tempfile
from typing import Optional, Sequence

import torch
import torch.nn as nn

from utils.errors import UserError

METADATA_FILE = "ke_metadata.json"
FORMAT = "knowledge-evolution-slim"
VERSION = 1


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
    from utils.net_utils import extract_slim, get_model    # imports the layers: only here
    if cfg.split_mode != "kels":
        raise ValueError(f"only KELS models have a slim network; this one was split with "
                         f"--split_mode {cfg.split_mode}")
    slim = get_model(cfg, slim=True)
    extract_slim(slim, _unwrap(dense_model))
    return slim.float().eval()


def export_slim(dense_model: nn.Module, cfg, out_path: str,
                class_names: Optional[Sequence] = None, image_size: Optional[int] = None,
                mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                extra: Optional[dict] = None) -> dict:
    """Write the slim network of `dense_model` (a KELS model of `cfg`) to `out_path`.

    class_names: one per output (DataSplits.classes; default "0".."K-1"). image_size, mean, std:
    default cfg.image_size and the normalisation of --set cfg.set (data.formats.normalisation).
    The file is written atomically (temporary file, then rename). Returns the metadata.
    """
    from data.formats import normalisation
    from data.transforms import eval_resize

    slim = build_slim(dense_model, cfg)
    num_classes = int(cfg.num_cls)
    class_names = list(range(num_classes)) if class_names is None else list(class_names)
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
    set_mean, set_std = normalisation(cfg.set)
    size = int(image_size or cfg.image_size)
    metadata = {
        "format": FORMAT, "version": VERSION, "arch": cfg.arch,
        "split_rate": float(cfg.split_rate), "num_classes": num_classes,
        "class_names": [c if isinstance(c, (int, float, str)) else str(c) for c in class_names],
        "image_size": size, "eval_resize": eval_resize(size),
        "mean": [float(v) for v in (mean or set_mean)], "std": [float(v) for v in (std or set_std)],
        "input": f"float32 [N, 3, {size}, {size}] RGB scaled to [0, 1], then (x - mean) / std",
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

    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt2")
    os.close(fd)
    try:
        torch.export.save(program, tmp, extra_files={METADATA_FILE: json.dumps(metadata)})
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
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


def read_exported(path: str):
    """(torch.export program, metadata) of a file written by `export_slim`."""
    if not os.path.isfile(path):
        raise UserError(f"exported model {path} does not exist")
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as error:
        raise UserError(f"{path} is not a readable torch.export file ({type(error).__name__}: "
                        f"{' '.join(str(error).split())[:120]})") from None
    try:
        metadata = json.loads(extra[METADATA_FILE])
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise UserError(f"{path} has no slim-model metadata; it was not written by export_slim")
    return program, metadata


def load_exported(path: str):
    """(ExportedModel, metadata) from a file written by `export_slim`: eval mode, CPU."""
    program, metadata = read_exported(path)
    return ExportedModel(program.module(), metadata), metadata
