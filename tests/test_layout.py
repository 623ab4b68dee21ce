"""The import graph of the project: no cycles, and no import that runs back up the layers
(constants, errors, argtypes and layers at the bottom, then models, utils, data, methods,
configs, trainers and the entry points), with no exception for any file."""
import ast
import os
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"constants": 0, "errors": 0, "argtypes": 0, "layers": 0, "models": 1, "utils": 2,
          "data": 3, "methods": 4, "configs": 5, "trainers": 6, "train_KE_cls": 7,
          "export_lists": 7}
# what every layer may import: it imports nothing of the project itself
BOTTOM = {"constants", "errors", "argtypes"}


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def project_modules() -> dict:
    """{module name: path} for every Python file of the project outside tests/ and benchmarks/."""
    found = {}
    for top in LAYERS:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path + ".py"):
            found[top] = path + ".py"
            continue
        for folder, _, files in os.walk(path):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                    found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, name)
    return found


def imports_of(path: str, modules: dict) -> set:
    """Project modules that the file at `path` imports, at any depth of its code."""
    tree = ast.parse(Path(path).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in modules}


def graph() -> dict:
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def test_the_project_is_found():
    g = graph()
    assert {"layers.split_base", "models.builder", "models.evolution", "data.loading",
            "configs.base_config", "trainers.knowledge_evolution", "train_KE_cls"} <= set(g)


def test_the_bottom_modules_import_nothing_of_the_project():
    g = graph()
    assert {m: g[m] for m in BOTTOM} == {m: set() for m in BOTTOM}


def test_no_import_runs_back_up_the_layers():
    upward = [f"{m} imports {d}" for m, deps in graph().items() for d in deps
              if layer(d) > layer(m)]
    assert upward == []


def test_no_import_cycle():
    g = graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(g[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("module", ["configs.base_config", "data.catalog", "models.names"])
def test_the_parser_and_its_choice_lists_need_no_torch(module):
    import subprocess
    import sys
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
