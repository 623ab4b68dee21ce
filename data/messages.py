"""Short text pieces for one-line error messages and warnings."""

SHOWN = 3           # how many offending items a message quotes


def short(items, n: int = SHOWN) -> str:
    """The first `n` items, comma-separated, with a count of the rest."""
    items = list(items)
    text = ", ".join(str(x) for x in items[:n])
    return text + (f" (and {len(items) - n} more)" if len(items) > n else "")


def one_line(error: BaseException) -> str:
    """An exception's message on one line of at most 120 characters (its type when empty)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."
