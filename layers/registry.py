"""Name -> class tables, filled where each class is defined (`@register(TABLE)`), so that a name
is written next to the class it stands for and no list elsewhere can pair them up wrongly."""
from collections.abc import Callable


def register(table: dict, name: str | None = None) -> Callable:
    """Decorator: `table[name or obj.__name__] = obj`; a name registered twice is an error.

    `name` is for aliases of PyTorch's classes (`DenseConv` is nn.Conv2d), registered with
    `register(TABLE, "DenseConv")(nn.Conv2d)`."""
    def add(obj):
        key = obj.__name__ if name is None else name
        if key in table:
            raise ValueError(f"{key!r} is registered twice: {table[key]!r} and {obj!r}")
        table[key] = obj
        return obj
    return add


def check_names(table: dict, names, what: str):
    """RuntimeError unless `table` holds exactly `names` (the torch-free list the parser offers
    as choices), in any order; the message says which names are missing on either side."""
    unregistered, unlisted = set(names) - set(table), set(table) - set(names)
    if unregistered or unlisted:
        raise RuntimeError(f"{what}: models/names.py lists {sorted(unregistered)} that no class "
                           f"registers, and {sorted(unlisted)} are registered but not listed")
