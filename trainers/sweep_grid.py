"""A sweep's grid: axes of training flags, their points, names and checks. Torch-free.

An axis is `FLAG=V1,V2,...` (`--grid` or a YAML file): values of a training flag, `on,off` for a
boolean flag, `A-B` for the integers A..B. Each point of the grid is one `train_KE_cls.py` run,
named after its values, checked by the training command's own parser before anything starts.
"""
import argparse
import contextlib
import hashlib
import io
import itertools
import re
import reprlib
from collections.abc import Sequence

from configs.base_config import Config, build_parser
from configs.config_file import flag_action, unknown_key
from configs.flag_kinds import RESUME_FROM_COMMAND_LINE
from errors import UserError

# Flags the sweep writes itself for every point.
SWEEP_OWNED = ("name", "log_dir", "resume", "evaluate", "export_slim", "help")
BOOLEAN_VALUES = {"on": True, "off": False}
RANGE = re.compile(r"^(\d+)-(\d+)$")
NAME_LIMIT = 80
MAX_POINTS = 10000         # far beyond any grid one would run; checked before anything expands
YAML_NODES = 10000         # a grid file's size after its aliases and merges are followed
UNSAFE = re.compile(r"[^A-Za-z0-9.+=-]")


class Axis:
    """One flag of the grid and its values, as text."""

    def __init__(self, flag: str, values: Sequence[str], action: argparse.Action):
        self.flag, self.values, self.action = flag, list(values), action

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def boolean(self) -> bool:
        return self.action.nargs == 0

    def argv(self, value: str) -> list[str]:
        option = option_of(self.action)
        if self.boolean:
            return [option] if BOOLEAN_VALUES[value] else []
        return [option, value]

    def to_json(self) -> dict:
        return {"flag": self.flag, "values": self.values}


def _action(flag: str) -> argparse.Action:
    parser = build_parser()
    action = flag_action(parser, flag)      # the keys of --config_file too
    if action is None:
        raise unknown_key(parser, flag, f"--grid {flag}")
    if action.dest in SWEEP_OWNED:
        raise UserError(f"--grid {flag}: the sweep sets --name, --log-dir and --resume of every "
                        "point itself; vary another training flag")
    return action


def option_of(action: argparse.Action) -> str:
    """The flag's first long spelling (--lr, --arch)."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def _values(flag: str, action: argparse.Action, items: Sequence[str]) -> list[str]:
    values = []
    for item in items:
        item = str(item).strip()
        match = RANGE.match(item)
        if action.nargs == 0:
            if item not in BOOLEAN_VALUES:
                raise UserError(f"--grid {flag}={item}: {flag} is a switch; give its values as "
                                f"on,off")
            values.append(item)
        elif match and action.type not in (None, str) and int(match[1]) <= int(match[2]):
            count = int(match[2]) - int(match[1]) + 1
            if len(values) + count > MAX_POINTS:
                raise UserError(f"--grid {flag}={item}: {count} values, more than a sweep runs "
                                f"({MAX_POINTS}); give a smaller range")
            values.extend(str(v) for v in range(int(match[1]), int(match[2]) + 1))
        elif match and action.type not in (None, str):
            raise UserError(f"--grid {flag}={item}: a range goes upwards, such as "
                            f"{match[2]}-{match[1]}")
        elif not item:
            raise UserError(f"--grid {flag}: an empty value; write FLAG=V1,V2,...")
        else:
            values.append(item)
    if not values:
        raise UserError(f"--grid {flag}: no values; write FLAG=V1,V2,...")
    return values


def parse_axis(text: str) -> Axis:
    """`FLAG=V1,V2,...` as an Axis."""
    flag, equals, values = text.partition("=")
    if not equals or not flag.strip():
        raise UserError(f"--grid {text}: write FLAG=V1,V2,... (such as seed=0-4 or cs_kd=on,off)")
    flag = flag.strip()
    action = _action(flag)
    return Axis(flag.lstrip("-"), _values(flag, action, values.split(",")), action)


def _yaml_scalar(flag: str, value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise UserError(f"grid file: {flag} = {reprlib.repr(value)}: expected a number, a string or "
                    "a boolean")


def read_grid_file(path: str):
    """(axes, fixed training argv) from a YAML file `{grid: {FLAG: [values] or "A-B"},
    fixed: {FLAG: value}}`; a fixed boolean flag is given as true or false."""
    content = _load_yaml(path)
    if not isinstance(content, dict) or set(content) - {"grid", "fixed"} \
            or not isinstance(content.get("grid", {}), dict) \
            or not isinstance(content.get("fixed", {}) or {}, dict):
        raise UserError(f"--grid_file {path}: expected a mapping with 'grid' (FLAG: values) and "
                        "optionally 'fixed' (FLAG: value)")
    axes = []
    for flag, values in (content.get("grid") or {}).items():
        items = values if isinstance(values, list) else [values]
        axes.append(parse_axis(f"{flag}=" + ",".join(_yaml_scalar(flag, v) for v in items)))
    fixed = []
    for flag, value in (content.get("fixed") or {}).items():
        action = _action(str(flag))
        option = option_of(action)
        if action.nargs == 0:
            if not isinstance(value, bool):
                raise UserError(f"--grid_file {path}: fixed {flag} = {value!r}: {flag} is a "
                                "switch; write true or false (without quotes)")
            fixed += [option] if value else []
        else:
            fixed += [option, _yaml_scalar(flag, value)]
    return axes, fixed


def _load_yaml(path: str):
    """The YAML document of the grid file `path`: a regular file of bounded size, without
    duplicate keys, whose size after following its aliases and merge keys is bounded (checked
    on the composed nodes, before anything is built from them); UserError otherwise."""
    import yaml

    from utils.safe_files import read_regular
    try:
        text = read_regular(path, limit=1 << 20).decode("utf-8")
    except OSError as error:
        raise UserError(f"--grid_file {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--grid_file {path}: not UTF-8 text; fix the file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        size, duplicate = _yaml_size(node)
        if size > YAML_NODES:
            raise UserError(f"--grid_file {path}: it expands to more than {YAML_NODES} values "
                            "once its aliases are followed; write the grid out plainly")
        if duplicate is not None:
            raise UserError(f"--grid_file {path}: the key {duplicate.value!r} is given twice "
                            f"(line {duplicate.start_mark.line + 1}); keep one of them")
        return yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"--grid_file {path}: nested too deeply; a grid file is a mapping of "
                        "flags to lists of values") from None
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"--grid_file {path}: not valid YAML{where}; fix the file") from None


def _yaml_size(root):
    """(the number of nodes of `root` with every alias expanded, the first repeated key node
    or None), in time linear in the distinct nodes (an alias is the node it names)."""
    import yaml
    sizes, duplicate = {}, None

    def size(node):
        nonlocal duplicate
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = YAML_NODES + 1            # a cycle counts as too large
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen and duplicate is None:
                        duplicate = key
                    seen.add(key.value)
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        for child in children:
            total = min(total + size(child), YAML_NODES + 1)
        sizes[id(node)] = total
        return total

    return size(root), duplicate


def point_name(axes: Sequence[Axis], values: Sequence[str]) -> str:
    """`flag-value_flag-value`, characters unsafe in a folder name replaced; a long name is
    cut and ends with a hash of the values so that it stays unique."""
    readable = "_".join(f"{a.flag}-{UNSAFE.sub('_', v)}"
                        for a, v in zip(axes, values, strict=True)) or "point"
    if len(readable) <= NAME_LIMIT:
        return readable
    digest = hashlib.sha1("\0".join(values).encode()).hexdigest()[:8]
    return f"{readable[:NAME_LIMIT - 9]}-{digest}"


class Point:
    """One run of the grid: its name, axis values and `train_KE_cls.py` flags."""

    def __init__(self, name: str, values: dict[str, str], argv: list[str], resume_argv: list[str]):
        self.name, self.values, self.argv, self.resume_argv = name, values, argv, resume_argv

    def to_json(self) -> dict:
        return {"name": self.name, "values": self.values, "argv": self.argv}


def resume_argv(cfg, folder: str, name: str) -> list[str]:
    """The flags that continue a point: where it is, --resume, and the machine's flags given
    (a resumed run takes everything else from its settings.json)."""
    parser, argv = build_parser(), ["--log-dir", folder, "--name", name, "--resume"]
    for action in parser._actions:
        if action.dest in RESUME_FROM_COMMAND_LINE and action.dest != "resume" \
                and action.dest in cfg.given_flags:
            argv += [option_of(action), str(getattr(cfg, action.dest))]
    return argv


def _check(argv: list[str], where: str):
    """The configuration train_KE_cls.py would parse from `argv`; UserError with its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return Config().parse(argv)
    except SystemExit:
        message = err.getvalue().strip().splitlines()
        text = message[-1] if message else "refused by train_KE_cls.py"
        raise UserError(f"{where}: {text.replace('train_KE_cls.py: error: ', '')}") from None


def expand(axes: Sequence[Axis], fixed: Sequence[str], folder: str) -> list[Point]:
    """Every point of the grid under `folder`, each checked; UserError on the first problem."""
    dests = [a.dest for a in axes]
    for dest in set(dests):
        if dests.count(dest) > 1:
            raise UserError(f"--grid: {dest} is given as two axes; put all its values in one")
    fixed_cfg = _check(list(fixed), "training flags")
    owned = sorted(set(fixed_cfg.given_flags) & set(SWEEP_OWNED))
    if owned:
        raise UserError(f"training flags: --{owned[0].replace('_', '-')} is set by the sweep for "
                        "every point; drop it (the sweep's --log-dir and --name say where)")
    both = [a.flag for a in axes if a.dest in fixed_cfg.given_flags]
    if both:
        raise UserError(f"--grid {both[0]}: also among the fixed training flags; drop one of them")
    count = 1
    for axis in axes:
        count *= len(axis.values)
        if count > MAX_POINTS:
            raise UserError(f"--grid: more than {MAX_POINTS} points; a sweep that size would "
                            "never finish: give fewer values")
    points, seen = [], {}
    for values in itertools.product(*(a.values for a in axes)):
        name = point_name(axes, values)
        if name in seen:
            raise UserError(f"--grid: points {seen[name]} and {dict(zip(dests, values, strict=True))} would "
                            f"both be named {name}; remove the repeated value")
        seen[name] = dict(zip(dests, values, strict=True))
        argv = list(fixed) + [x for a, v in zip(axes, values, strict=True) for x in a.argv(v)]
        argv += ["--log-dir", folder, "--name", name]
        cfg = _check(argv, f"point {name}")
        points.append(Point(name, {a.flag: v for a, v in zip(axes, values, strict=True)}, argv,
                            resume_argv(cfg, folder, name)))
    return points
