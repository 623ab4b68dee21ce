"""Forgetting methods (`--forget`): what generation g >= 1 keeps of generation g - 1's weights.

One module of this package per method. A module defines a `Method` subclass and registers it
with `@register("name")`, which gives it everything the toolkit asks of a method:

- `summary`: one line, for `--forget`'s help and the README's table;
- `flags`: its own flags, {"--flag": argparse keywords with the method's `default`}; they are
  refused with any other method, and take their default only when the method runs;
- `uses`: flags defined elsewhere that only this method reads (refused with the others);
- `check(cfg, fail)`: its rules, run before any data is read;
- `slim_reason`: None when the fit hypothesis is kept (a slim network exists), else why not;
- `name_part(cfg)`: its part of the default experiment name;
- `forget(ctx)`: the hook, which returns the model generation ctx.generation starts from
  (ctx: trainers.forget_context.ForgetContext).

Options that combine with every method (born-again distillation, the long schedule) register
with `@register_option` and have the same flags, checks and name part.

Importing a module here must not import torch (the parser lists the methods for `--help`, which
answers at once): hooks import what they use when they run. Every module of the package is
imported below, so adding a method is adding a file.
"""
import importlib
import pkgutil
from collections.abc import Callable

from argtypes import METHOD

DEFAULT_METHOD = "ke"
METHODS: dict[str, type] = {}
OPTIONS: dict[str, type] = {}


class Method:
    name: str = ""
    summary: str = ""
    paper: str = ""
    flags: dict[str, dict] = {}
    uses: tuple = ()
    chosen_by: tuple = ()                 # flags that, given alone, choose this method
    slim_reason: str | None = None
    continues_schedule = False            # the optimizer and schedule go on across generations

    @classmethod
    def check(cls, cfg, fail: Callable[[str], None]):
        """The method's own rules; `fail(message)` reports a violation."""

    @classmethod
    def how_to_choose(cls) -> str:
        if cls.chosen_by:
            return f"--{cls.chosen_by[0]} {cls.flags['--' + cls.chosen_by[0]].get('metavar', 'VALUE')}"
        return f"--forget {cls.name}"

    @classmethod
    def name_part(cls, cfg) -> str:
        return f"_fg{cls.name}"

    @classmethod
    def check_model(cls, cfg, model):
        """Raise ValueError when the method cannot act on `model` (built once before training)."""

    def forget(self, ctx):
        """The model generation ctx.generation (>= 1) starts from."""
        raise NotImplementedError

    def forget_pretrained(self, cfg, model, generation: int):
        """Generation 0 started from --pretrained (without --keep_pretrained_reset): what it
        forgets of the file. Only the methods with a part to re-draw forget anything."""

    def extra_rows(self, cfg, folder: str, model) -> list:
        """Test rows beside the dense and slim ones for a generation's trained `model` (`folder`:
        the generation's): [(row kind, model to test)]."""
        return []


def _registered_in(table: dict, name: str):
    def add(cls):
        cls.name = name
        table[name] = cls
        return cls
    return add


def register(name: str):
    return _registered_in(METHODS, name)


def register_option(name: str):
    return _registered_in(OPTIONS, name)


def method_of(cfg) -> Method:
    return METHODS[cfg.forget]()


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _default_text(value) -> str:
    return "off" if value is False else str(value)


def add_flags(parser, default_method: str = DEFAULT_METHOD):
    """--forget with a choice per method, then each method's and option's flags in a group."""
    group = parser.add_argument_group("forgetting between generations")
    lines = "; ".join(f"{name}: {METHODS[name].summary}" for name in sorted(METHODS))
    group.add_argument("--forget", role=METHOD, default=default_method, choices=sorted(METHODS),
                       help=f"what each generation after the first forgets (default: "
                            f"{default_method}). {lines}")
    for owner in [*map(METHODS.get, sorted(METHODS)), *map(OPTIONS.get, sorted(OPTIONS))]:
        if not owner.flags:
            continue
        group = parser.add_argument_group(f"--forget {owner.name}" if owner.name in METHODS
                                          else owner.summary.split(":")[0])
        for flag, spec in owner.flags.items():
            spec = dict(spec)
            default = spec.pop("default")
            if spec.get("action") == "store_true":
                group.add_argument(flag, role=METHOD, **spec)
            else:
                if default is not None:
                    spec["help"] = f"{spec['help']} (default: {_default_text(default)})"
                group.add_argument(flag, role=METHOD, default=None, **spec)


def choose(cfg, given: set):
    """--forget left unsaid: the method whose `chosen_by` flag was given, else the default."""
    if "forget" in given:
        return
    for method in METHODS.values():
        if any(getattr(cfg, dest, None) is not None for dest in method.chosen_by):
            cfg.forget = method.name


def _is_set(cfg, flag: str, spec: dict) -> bool:
    value = getattr(cfg, _dest(flag), None)
    return bool(value) if spec.get("action") == "store_true" else value is not None


def check(cfg, fail: Callable[[str], None]):
    """A method's flags with another method, then the chosen method's and every option's rules."""
    for method in METHODS.values():
        if method.name == cfg.forget:
            continue
        for flag, spec in method.flags.items():
            if _is_set(cfg, flag, spec):
                fail(f"argument {flag}: only --forget {method.name} uses it (this run forgets with "
                     f"{cfg.forget}); drop it or add {method.how_to_choose()}")
        for dest in method.uses:
            if dest in getattr(cfg, "given_flags", ()) and dest not in METHODS[cfg.forget].uses:
                fail(f"argument --{dest}: only --forget {method.name} reads it, not --forget "
                     f"{cfg.forget}; drop it")
    METHODS[cfg.forget].check(cfg, fail)
    for option in OPTIONS.values():
        option.check(cfg, fail)


def apply_defaults(cfg):
    """The chosen method's and the enabled options' flags left unsaid take their defaults."""
    owners = [METHODS[cfg.forget]] + [o for o in OPTIONS.values() if o.enabled(cfg)]
    for owner in owners:
        for flag, spec in owner.flags.items():
            if getattr(cfg, _dest(flag)) is None:
                setattr(cfg, _dest(flag), spec["default"])


def name_part(cfg) -> str:
    return METHODS[cfg.forget].name_part(cfg) + "".join(
        option.name_part(cfg) for option in OPTIONS.values() if option.enabled(cfg))


class Option:
    """A setting that combines with every method (e.g. born-again distillation)."""
    name: str = ""
    summary: str = ""
    flags: dict[str, dict] = {}

    @classmethod
    def enabled(cls, cfg) -> bool:
        return False

    @classmethod
    def check(cls, cfg, fail: Callable[[str], None]):
        pass

    @classmethod
    def name_part(cls, cfg) -> str:
        return ""


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
