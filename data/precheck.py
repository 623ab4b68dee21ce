"""The checks of the paths a command names that need no torch: done right after the flags are
parsed, so that a wrong --data, a missing dataset layout or a missing checkpoint is reported in a
fraction of a second instead of after torch, torchvision and the model are imported.

Only what the file system shows is checked here (a folder or file exists); the contents (list
rows, labels, images, checkpoints) are checked by the readers, as before.
"""
import os

from data import DataError
from data.catalog import CATALOG

SYNTHETIC_SET = "SyntheticShapes"      # generated on first use: nothing to check


def lists_folder_missing(cfg, info, folder: str, original: str = "") -> str:
    """The message for a lists-layout dataset folder that is not there (also data.loading's)."""
    return (f"dataset folder not found: {folder} (--set {cfg.set} under --data {cfg.data}); "
            f"expected {info.folder}/{info.images}/ with the images and {info.folder}/lists/"
            f"trn.csv, val.csv, tst.csv (columns file_name,label){original}; pass --data or set "
            f"KE_DATASETS_DIR to the folder that holds {info.folder}/, or run --set "
            f"{SYNTHETIC_SET} for a built-in demo that needs no download")


def _file(flag: str, path: str, what: str):
    if not os.path.exists(path):
        raise DataError(f"{flag} {path}: no such file; give the path of {what}")
    if os.path.isdir(path):
        raise DataError(f"{flag} {path}: is a folder; give the path of {what}")


def check_files(cfg):
    """The checkpoints and weights the flags name exist."""
    if cfg.pretrained:
        _file("--pretrained", cfg.pretrained, "a checkpoint or a torchvision state_dict")
    if cfg.resume not in (None, "latest"):
        _file("--resume", cfg.resume, "a .state checkpoint of this experiment (or no path)")
    if cfg.evaluate:
        _file("--evaluate", cfg.evaluate, "a .state/.pth checkpoint or an exported .pt2 file")
    if cfg.export_slim:
        _file("--export_slim", cfg.export_slim[0], "a .state/.pth checkpoint")


def check_data(cfg):
    """The dataset's folder (and for the lists layout, its images folder and training list)."""
    info = CATALOG[cfg.set]
    if cfg.set == SYNTHETIC_SET:
        return
    if not os.path.isdir(cfg.data):
        raise DataError(f"--data {cfg.data}: no such folder (--set {cfg.set}); pass --data DIR "
                        f"or set KE_DATASETS_DIR, or run --set {SYNTHETIC_SET} for a built-in "
                        f"demo that needs no download")
    if info.format != "lists":
        return                                  # its reader knows its layouts
    folder = os.path.join(cfg.data, info.folder)
    if not os.path.isdir(folder):
        original = ", or the original download (see the README's Datasets)" if info.original \
            else ""
        raise DataError(lists_folder_missing(cfg, info, folder, original))
    if info.original and not os.path.isdir(os.path.join(folder, "lists")):
        return                                  # the original download: data.originals checks it
    image_dir = os.path.join(folder, info.images)
    if not os.path.isdir(image_dir):
        raise DataError(f"image folder not found: {image_dir}; the dataset folder {folder} "
                        f"must hold the images in {info.images}/ (file_name in the lists is "
                        f"relative to it)")
    train_list = os.path.join(folder, "lists", "trn.csv")
    if not os.path.isfile(train_list):
        raise DataError(f"training list not found: {train_list}; create it with a header "
                        f"file_name,label and one row per training image (paths relative to "
                        f"{image_dir})")


def precheck(cfg):
    """DataError for a path of `cfg` that is not there. A resumed run, --evaluate and
    --export_slim take their dataset from the experiment or checkpoint, so only the files they
    name are checked for them."""
    check_files(cfg)
    if cfg.resume or cfg.evaluate or cfg.export_slim:
        return
    check_experiment_folder(cfg)
    check_data(cfg)


def check_experiment_folder(cfg):
    """What trainers.experiment refuses of the folder a new run writes, said before the data's
    problems as there (a link out of --log-dir, a file in the folder's place)."""
    folder = os.path.join(cfg.log_dir, cfg.name)
    if os.path.islink(folder):
        raise DataError(f"experiment folder {folder} is a symbolic link (to "
                        f"{os.path.realpath(folder)}), which would put the run's files "
                        f"outside --log-dir; remove the link or choose another --name")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"experiment folder {folder} is a file, not a folder; move it away "
                        f"or choose another --name")
