"""dvc.yaml: every stage depends on exactly the code its command runs.

A stage's code is the ``aits`` command's module (``cli.py``), the package modules ``cli.py``
imports at its top and those imported by the command's function (and by the ``cli.py`` helpers it
calls), closed over every package import of every module reached (imports inside functions
included: a conservative over-count, never an under-count), plus the ``__init__.py`` of every
package on the way. A dependency of ``dvc.yaml`` may name a directory: it stands for every
module under it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src"
PACKAGE = "aitimestepper"
CLI = SOURCE / PACKAGE / "cli.py"


def module_file(name: str) -> Path | None:
    base = SOURCE.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def package_imports(node: ast.AST, module: str) -> set[str]:
    """The package modules named by the import statements under ``node`` (of ``module``), with
    every enclosing package."""
    names: set[str] = set()
    for statement in ast.walk(node):
        if isinstance(statement, ast.Import):
            names |= {alias.name for alias in statement.names}
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                parent = module.split(".")[: -statement.level]
                base = ".".join([*parent, *([statement.module] if statement.module else [])])
            names |= {base, *(f"{base}.{alias.name}" for alias in statement.names)}
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == PACKAGE:
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}
    return found


def import_closure(modules: set[str]) -> set[str]:
    seen: set[str] = set()
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending += package_imports(ast.parse(module_file(module).read_text()), module)
    return seen


def command_code(command: str) -> set[Path]:
    """The source files ``aits COMMAND`` runs."""
    tree = ast.parse(CLI.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    [entry] = [
        node
        for node in functions.values()
        for decorator in node.decorator_list
        if isinstance(decorator, ast.Call)
        and getattr(decorator.func, "attr", None) == "command"
        and decorator.args
        and decorator.args[0].value == command
    ]
    modules = {f"{PACKAGE}.cli"} - {f"{PACKAGE}.cli"}
    for statement in tree.body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            modules |= package_imports(statement, f"{PACKAGE}.cli")
    called, pending = set(), [entry.name]
    while pending:
        name = pending.pop()
        if name in called:
            continue
        called.add(name)
        modules |= package_imports(functions[name], f"{PACKAGE}.cli")
        pending += [
            node.func.id
            for node in ast.walk(functions[name])
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions
        ]
    return {CLI, *(module_file(module) for module in import_closure(modules))}


def declared_code(deps: list[str]) -> set[Path]:
    """The source files the ``deps`` of a stage name (directories expanded)."""
    files = set()
    for dep in deps:
        path = REPO / dep
        if path.is_relative_to(SOURCE):
            files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return files


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_exactly_the_code_it_runs(stage):
    definition = STAGES[stage]
    words = definition["cmd"].split()
    assert words[0] == "aits", f"{stage}: the check reads commands of the form `aits COMMAND ...`"
    runs = command_code(words[1])
    declared = declared_code(definition["deps"])
    relative = lambda files: sorted(str(path.relative_to(REPO)) for path in files)  # noqa: E731
    assert declared == runs, (
        f"stage {stage}: missing {relative(runs - declared)}, not run {relative(declared - runs)}; "
        f"the code it runs: {relative(runs)}"
    )


def test_the_check_sees_lazy_imports():
    """Guards the analysis itself: `aits train` imports the trainer inside its function only,
    and `aits promote` runs no physics kernels but the registry."""
    train, promote = command_code("train"), command_code("promote")
    assert SOURCE / PACKAGE / "training" / "trainer.py" in train
    assert SOURCE / PACKAGE / "registry.py" in promote
    assert SOURCE / PACKAGE / "kernels" / "rollout.py" not in promote


def test_the_train_stage_reads_the_settings_a_checkpoint_records():
    """A model is a function of MODEL_SETTINGS (all its checkpoint records) and the train stage
    re-runs on exactly those (and on the experiment name its MLflow run goes to)."""
    from aitimestepper.config import MODEL_SETTINGS

    assert sorted(STAGES["train"]["params"]) == sorted([*MODEL_SETTINGS, "tracking.experiment_name"])
