"""The files that say how a run's data was drawn (val_split.csv, noisy_labels.csv: the
`records` of data.lists.DataSplits), kept in the experiment folder.

A new run writes them, each atomically; a resumed run must draw exactly the same ones: a
record that differs from the one on disk stops it, since its validation split or its noisy
labels would no longer be those its checkpoints were trained with."""
import os

from errors import UserError
from utils.safe_files import open_no_follow, read_text, replaced_when_written

WHAT = {"val_split.csv": "validation hold-out (--val_fraction, --split_seed)",
        "noisy_labels.csv": "noisy training labels (--label_noise, --noise_type, --noise_seed)"}


def check_records(folder: str, records: dict[str, str]):
    """UserError when a record already in `folder` differs from the one the data gave now."""
    for name, text in records.items():
        path = os.path.join(folder, name)
        if os.path.lexists(path) and read_text(path, no_follow=True) != text:
            raise UserError(f"{path} holds another {WHAT.get(name, name)} than the data gives "
                            f"now (the lists, the images or the flags changed); resume with the "
                            f"data the run started with, or start a new run with another --name")


def write_records(folder: str, records: dict[str, str]):
    """Write the records `folder` lacks (each through a temporary file and a rename); the ones
    it holds must be the same (check_records)."""
    check_records(folder, records)
    for name, text in records.items():
        path = os.path.join(folder, name)
        if not os.path.lexists(path):
            with replaced_when_written(path) as tmp, open_no_follow(tmp, "w") as f:
                f.write(text)
