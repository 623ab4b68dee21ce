"""Runs grouped into methods by the roles of their settings, and what a comparison reads of them.

A run's settings.json records the role of every flag of the version that ran it (argtypes:
METHOD, RECIPE, RUN, under ROLES_KEY). Runs whose method and recipe settings are all equal form
one group; run settings (seed, names, paths, threads, devices, logging) never split one. Keys of
settings.json that are no flag of the run's version (values derived from others, such as num_cls
or process_batch_size, and settings of older versions that are no flags any more) are left out.
Runs written before the roles were recorded take the roles recorded by the other runs compared;
when no run has them, runs are grouped by --forget alone (and the notes say so).
"""
import json
from collections import Counter
from collections.abc import Sequence

from argtypes import METHOD, RECIPE, ROLES_KEY
from utils.intervals import Interval, interval

DEFAULT_FORGET = "ke"           # runs from before --forget trained Knowledge Evolution
UNSAID = (None, False)          # a setting unused or off is left out of a label


def compared_keys(settings: Sequence[dict]) -> list[str] | None:
    """The method and recipe settings of the runs' recorded roles; None when none recorded any."""
    records = [s.get(ROLES_KEY) for s in settings if isinstance(s.get(ROLES_KEY), dict)]
    if not records:
        return None
    keys = {k for record in records for role in (METHOD, RECIPE)
            for k in record.get(role, ()) if isinstance(k, str)}
    return sorted(keys - {"forget"})


def _value(settings: dict, key: str) -> str:
    return json.dumps(settings.get(key), sort_keys=True)


def group_labels(settings: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """({run: its group's label}, notes). A label is forget=X followed by the compared settings
    that differ between the groups where this group's value is not the one most groups share
    (ties: the first group's), e.g. "forget=none lr_policy=long_cosine_lr" beside "forget=ke"
    and "forget=none"; all differing settings where that would make two labels alike."""
    keys = compared_keys(list(settings.values()))
    notes = []
    if keys is None:
        keys = []
        if len(settings) > 1:
            notes.append("no run recorded the roles of its settings (runs from an older "
                         "version): grouped by --forget alone")
    forget = {run: s.get("forget", DEFAULT_FORGET) for run, s in settings.items()}
    identity = {run: (forget[run],) + tuple(_value(s, k) for k in keys)
                for run, s in settings.items()}
    representative = {}
    for run, key in identity.items():
        representative.setdefault(key, settings[run])
    differing = [k for k in keys
                 if len({_value(s, k) for s in representative.values()}) > 1]
    common = {k: Counter(_value(s, k) for s in representative.values()).most_common(1)[0][0]
              for k in differing}

    def label(s: dict, shown) -> str:
        return " ".join([f"forget={s.get('forget', DEFAULT_FORGET)}"] + [
            f"{k}={s[k]}" for k in differing if s.get(k) not in UNSAID and shown(s, k)])

    def uncommon(s, k):
        return _value(s, k) != common[k]
    labels = {key: label(s, uncommon) for key, s in representative.items()}
    if len(set(labels.values())) < len(labels):         # two groups would read alike
        labels = {key: label(s, lambda *_: True) for key, s in representative.items()}
    return {run: labels[identity[run]] for run in settings}, notes


def seed_of(settings: dict, run: str) -> str:
    """The run's seed as text (its name when settings.json has none)."""
    seed = settings.get("seed")
    return run if seed is None else str(seed)


def paired(method: dict[str, float], baseline: dict[str, float]) -> Interval | None:
    """The mean difference method - baseline over the seeds both have, with its 95% interval;
    None when they share no seed."""
    common = sorted(set(method) & set(baseline))
    if not common:
        return None
    return interval([method[s] - baseline[s] for s in common])
