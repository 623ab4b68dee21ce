"""What a run spent on training: `<experiment>/compute.json`.

    {"forward_flops_per_image": F, "generations": {"0": {"train_images": N, "train_seconds": S}}}

F is one forward pass of one image (utils.model_profile.count_flops, PyTorch's FlopCounterMode),
counted once per run when the model is checked. N counts every training image the generation's
steps went through (summed over the processes under torchrun) and S the seconds of its training
epochs (validation, tests and checkpoint writes not included). A generation stopped by a signal
writes what its finished epochs spent, and the resumed run adds the rest; a run killed without a
signal loses the epochs since its last write. The report (utils.report) sums it over generations.
"""
import json
import os

from utils.safe_files import open_no_follow, read_regular, replaced_when_written

COMPUTE_FILE = "compute.json"


def read_compute(folder: str) -> dict:
    """The record of the experiment `folder` ({} when there is none or it cannot be read)."""
    path = os.path.join(folder, COMPUTE_FILE)
    if not os.path.lexists(path):
        return {}
    try:
        record = json.loads(read_regular(path, no_follow=True))
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def _write(folder: str, record: dict):
    path = os.path.join(folder, COMPUTE_FILE)
    with replaced_when_written(path) as tmp, open_no_follow(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")


def record_flops(folder: str, forward_flops: int):
    """Record the forward FLOPs of one image, keeping the generations recorded so far."""
    _write(folder, dict(read_compute(folder), forward_flops_per_image=int(forward_flops)))


def add_training(folder: str, generation: int, images: int, seconds: float):
    """Add `images` and `seconds` to generation `generation`'s training record."""
    record = read_compute(folder)
    generations = record.get("generations")
    generations = dict(generations) if isinstance(generations, dict) else {}
    before = generations.get(str(generation))
    before = before if isinstance(before, dict) else {}
    generations[str(generation)] = {
        "train_images": int(before.get("train_images", 0)) + int(images),
        "train_seconds": round(float(before.get("train_seconds", 0.0)) + float(seconds), 3)}
    _write(folder, dict(record, generations=generations))


def training_totals(folder: str, generations: int) -> dict:
    """{"train_images", "train_seconds", "forward_flops_per_image"} summed over generations
    0 .. generations - 1; a value is None when a generation's record is missing."""
    record = read_compute(folder)
    recorded = record.get("generations") if isinstance(record.get("generations"), dict) else {}
    entries = [recorded.get(str(g)) for g in range(generations)]
    complete = all(isinstance(e, dict) for e in entries) and generations > 0
    flops = record.get("forward_flops_per_image")
    return {"train_images": sum(int(e["train_images"]) for e in entries) if complete else None,
            "train_seconds": sum(float(e["train_seconds"]) for e in entries) if complete else None,
            "forward_flops_per_image": int(flops) if isinstance(flops, (int, float)) else None}
