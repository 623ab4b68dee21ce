"""ci/floors.py: the constraints that `make test-floors` installs."""
import importlib.util
import os

import pytest

from tests.helpers import ROOT


def floors_module():
    spec = importlib.util.spec_from_file_location("floors", os.path.join(ROOT, "ci", "floors.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_floor_becomes_a_pin():
    lines = ["torch>=2.4,<3", "# a comment", "", "numpy >= 1.24.1  # why", "PyYAML>=6.0",
             "pkg[extra]>=1.0"]
    assert floors_module().floors(lines) == [("torch", "2.4"), ("numpy", "1.24.1"),
                                             ("PyYAML", "6.0"), ("pkg", "1.0")]


def test_a_requirement_without_a_floor_is_refused():
    with pytest.raises(SystemExit, match="'pandas' has no '>=' floor"):
        floors_module().floors(["pandas"])


def test_every_requirement_of_the_project_has_a_floor():
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        lines = [line for line in handle if line.split("#", 1)[0].strip()]
    assert len(floors_module().floors(lines)) == len(lines)
