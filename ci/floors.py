"""Print a pip constraints file that pins every requirement to its floor.

Each `name>=X` line of requirements.txt (upper bounds allowed) becomes `name==X`, so that
`pip install -r requirements.txt -c <this output>` installs the oldest versions the project
claims to support. A requirement without a floor is an error: its floor cannot be tested.
"""
import re
import sys

FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([^,;\s]+)")


def floors(lines):
    """[(name, oldest version)] for the requirement lines, comments and blanks skipped."""
    pinned = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = FLOOR.match(text)
        if match is None:
            raise SystemExit(f"requirements line {text!r} has no '>=' floor; give it one")
        name = match.group(1).split("[", 1)[0]
        pinned.append((name, match.group(2)))
    return pinned


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "requirements.txt"
    with open(path) as handle:
        for name, version in floors(handle):
            print(f"{name}=={version}")
