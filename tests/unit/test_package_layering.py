"""The tree's dependency rules, checked on the source: imports point one way, no cycles.

- `dspy_service/` (shared models, settings, the contract) imports nothing above it;
- `tasks/` (the stages) know nothing of HTTP, the flow or the runtime;
- `flows/` composes `tasks/`; `api/` talks to Prefect and the shared modules only;
- `deployments/` (registration, the stack, the job runtime) never imports the API,
  the flow or the stages (the zygote names the flow by string), except that
  registration reads the flow's parameter schema;
- no two of our modules import each other, directly or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "flows", "tasks", "deployments", "dspy_service")
ALLOWED = {
    "dspy_service": {"dspy_service"},
    "tasks": {"tasks", "dspy_service"},
    "flows": {"flows", "tasks", "dspy_service"},
    "api": {"api", "dspy_service"},
    "deployments": {"deployments", "dspy_service"},
}
# Registering the deployment derives its parameter schema from the flow itself.
EXCEPTIONS = {("deployments.register", "flows.optimize"), ("deployments.register", "flows.batch_predict")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at module level or inside a function."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` inside package a.b is a.b.x
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def source_files() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def test_imports_point_one_way():
    wrong = []
    for name, path in source_files().items():
        top = name.split(".")[0]
        for target in imported_modules(path):
            allowed = target.split(".")[0] in ALLOWED[top] or any(
                name == source and (target == module or target.startswith(module + "."))
                for source, module in EXCEPTIONS
            )
            if not allowed:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    files = source_files()
    graph = {
        name: {target for target in imported_modules(path) if target in files and target != name}
        for name, path in files.items()
    }
    # A package's __init__ importing its own submodules is how packages re-export: not a cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (files[name].name == "__init__.py" and t.startswith(name + "."))}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)
