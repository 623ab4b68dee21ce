"""The exception for bad user input, and the pieces of its one-line messages.

At the bottom of the import layers: every package may raise UserError, which the entry points
turn into a single `error: ...` line with exit status 2, never into a traceback. Library code
(layers/, models/, data/) raises ValueError/TypeError instead where the problem is not the user's
input as such; the command-line boundary adds the flag to change.
"""

SHOWN = 3           # how many offending items a message quotes
LINE_LIMIT = 120    # characters of another exception's message quoted in ours


class UserError(Exception):
    """A problem the user can fix; the message names it and says how."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line of at most LINE_LIMIT characters (its type when
    empty)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= LINE_LIMIT else text[:LINE_LIMIT - 3] + "..."


def short(items, n: int = SHOWN) -> str:
    """The first `n` items, comma-separated, with a count of the rest."""
    items = list(items)
    text = ", ".join(str(x) for x in items[:n])
    return text + (f" (and {len(items) - n} more)" if len(items) > n else "")
