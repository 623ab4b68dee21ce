"""--config_file FILE.yaml: flag values from a YAML mapping. Torch-free.

The keys are the flags' names without dashes (`lr`, `arch`, `batch_size`, `log-dir`; a flag's
destination such as `scale_fan` too), the same keys as the `fixed:` part of a sweep's
--grid_file (both resolve them with `flag_action`). A switch takes true or false. The file's
values come first on the command line, so a flag written there wins. The file is read with
yaml.safe_load: a python tag builds nothing and is refused in one line. An unknown key is
refused by name, with the closest flag names.
"""
import argparse
import hashlib
import os

from configs.suggest import did_you_mean
from errors import UserError

OPTION = "--config_file"
# what a config file may not set: itself, and the one-off commands of an invocation
NOT_IN_FILE = ("config_file", "help", "resume", "evaluate", "export_slim")


def flag_keys(parser: argparse.ArgumentParser) -> list[str]:
    """Every key a config file (or a grid file) accepts: the visible flags' names."""
    keys = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        keys += [o.lstrip("-") for o in action.option_strings if not o.startswith("--no-")]
        keys.append(action.dest)
    return sorted(set(keys))


def flag_action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    """The visible action a config/grid key names (`lr`, `--lr`, `a`, `weight_decay`), or None."""
    bare = str(key).strip().lstrip("-")
    options = parser._option_string_actions
    for option in (f"--{bare}", f"-{bare}"):
        action = options.get(option)
        if action is not None and action.help != argparse.SUPPRESS:
            return action
    return next((a for a in parser._actions if a.dest == bare and a.option_strings
                 and a.help != argparse.SUPPRESS), None)


def unknown_key(parser: argparse.ArgumentParser, key, where: str) -> UserError:
    return UserError(f"{where}: unknown key {key!r}: not a flag of train_KE_cls.py"
                     f"{did_you_mean(str(key).lstrip('-'), flag_keys(parser))}")


def find_config_file(argv: list[str]) -> str | None:
    """The path given with --config_file in `argv` (the last one), or None."""
    path = None
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == OPTION and i + 1 < len(argv):
            path = argv[i + 1]
        elif token.startswith(OPTION + "="):
            path = token[len(OPTION) + 1:]
    return path


def read_mapping(path: str, what: str) -> dict:
    """The YAML mapping in `path` (safe loader), or UserError in one line."""
    import yaml
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a folder; give a .yaml file")
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except OSError as error:
        raise UserError(f"{what} {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path}: not a text file; give a YAML file") from None
    except yaml.constructor.ConstructorError as error:
        tag = getattr(error, "problem", "") or "an unsupported tag"
        raise UserError(f"{what} {path}: {' '.join(str(tag).split())} (only plain YAML values "
                        f"are read: numbers, strings, true/false, lists); remove the tag") from None
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"{what} {path}: not valid YAML{where}; fix the file") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserError(f"{what} {path}: expected a mapping of flag names to values (such as "
                        f"'lr: 0.1'), got a {type(content).__name__}")
    return content


def _scalar(key, value, where: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise UserError(f"{where}: {key}: expected a number, a string or true/false, got "
                    f"{type(value).__name__}")


def file_argv(parser: argparse.ArgumentParser, content: dict, where: str) -> list[str]:
    """The command-line tokens that say what `content` ({flag name: value}) says."""
    argv = []
    for key, value in content.items():
        action = flag_action(parser, key)
        if action is None:
            raise unknown_key(parser, key, where)
        if action.dest in NOT_IN_FILE:
            raise UserError(f"{where}: {key}: not settable from a config file; give it on the "
                            f"command line")
        option = next((o for o in action.option_strings if o.startswith("--")),
                      action.option_strings[0])
        if value is None:
            continue                                        # null: the default
        if action.nargs == 0:
            if not isinstance(value, bool):
                raise UserError(f"{where}: {key}: a switch; write true or false, got {value!r}")
            argv += [option] if value else []
        elif isinstance(value, list):
            if action.nargs in (None, "?") or not value:
                raise UserError(f"{where}: {key}: takes one value, got a list")
            argv += [option] + [_scalar(key, v, where) for v in value]
        else:
            argv += [option, _scalar(key, value, where)]
    return argv


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def expand(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], dict | None]:
    """(`argv` with the config file's flags put first, so that the command line wins, and the
    record {path, sha256} for settings.json) or (`argv`, None) without --config_file. Each of
    the file's values is checked by the parser on its own, so a bad one names the file."""
    path = find_config_file(argv)
    if path is None:
        return list(argv), None
    where = f"{OPTION} {path}"
    tokens = file_argv(parser, read_mapping(path, OPTION), where)
    check = _raising_copy(parser)
    try:
        check.parse_args(tokens)
    except _Bad as bad:
        raise UserError(f"{where}: {bad}") from None
    return tokens + list(argv), {"path": os.path.abspath(path), "sha256": digest(path)}


class _Bad(Exception):
    pass


def _raising_copy(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` whose errors raise _Bad instead of exiting (for checking the file's values)."""
    import copy
    check = copy.copy(parser)

    def error(message):
        from configs.suggest import with_suggestion
        raise _Bad(with_suggestion(parser, message).replace("argument ", "key ", 1))
    check.error = error
    return check
