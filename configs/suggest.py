"""Did-you-mean for the one-line errors of the flags: the closest valid names (difflib), for a
mistyped choice (--arch, --set, --forget, --task, any flag with choices) or flag name. Torch-free."""
import argparse
import difflib
import re
from collections.abc import Iterable

CLOSEST = 3


def closest(word: str, candidates: Iterable[str], n: int = CLOSEST,
            cutoff: float = 0.6) -> list[str]:
    """The candidates nearest to `word`, best first; case is ignored (a lowercase 'resnet18'
    finds Split_ResNet18)."""
    candidates = [str(c) for c in candidates]
    by_lower = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)
    if not found:       # a fragment of a long name: 'resnet18' in 'split_resnet18'
        found = [c for c in by_lower if word and word.lower() in c][:n]
    return [by_lower[f] for f in found]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """'; did you mean X or Y?' (empty when nothing is close)."""
    found = closest(word, candidates)
    return f"; did you mean {' or '.join(found)}?" if found else ""


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every visible option string of `parser` (--lr, -a, ...)."""
    return [o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings]


_INVALID_CHOICE = re.compile(r"^argument (\S+): invalid choice: '((?:[^']|'(?! \(choose))*)'")
_UNRECOGNIZED = "unrecognized arguments: "


def with_suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's `message` with a did-you-mean where it names a bad choice or unknown flag."""
    match = _INVALID_CHOICE.match(message)
    if match:
        options, value = match.group(1).split("/"), match.group(2)
        action = next((a for a in parser._actions if set(options) & set(a.option_strings)), None)
        if action is not None and action.choices:
            hint = did_you_mean(value, action.choices)
            if hint:
                head = match.group(0)
                return head + hint + message[len(head):]
        return message
    if message.startswith(_UNRECOGNIZED):
        hints = []
        for token in message[len(_UNRECOGNIZED):].split():
            if token.startswith("-") and not _is_number(token):
                found = closest(token.split("=", 1)[0], option_names(parser), n=2, cutoff=0.75)
                if found:
                    hints.append(f"{token.split('=', 1)[0]}: did you mean {' or '.join(found)}?")
        if hints:
            return message + "; " + "; ".join(hints)
    return message


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False
