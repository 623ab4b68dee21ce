"""Datasets: what `--set` names (catalog.py), reading each source (loading.py: `get_data`,
`make_loader`), and the checks every source goes through (lists.py).

Kept free of imports so that the command-line parser reads the catalog without loading torch.
"""


class DataError(ValueError):
    """Bad input data (a path, a list file, a label, an image): the message names the problem
    and its fix. The entry points report it as they report a UserError: one line, exit 2."""


NOISE_TYPES = ("symmetric", "pairflip")   # --noise_type (data/label_noise.py), read by the parser
