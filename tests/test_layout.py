"""The package's layout rules, read from its source: no module reaches into another's privates.

A name with a leading underscore belongs to its module. A module that needs something of
another imports a public (in-package) name; otherwise the two are one concern split across
files, and a change to one breaks the other unseen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import plainid_async

PACKAGE = Path(plainid_async.__file__).parent
NAME = "plainid_async"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_from(node: ast.ImportFrom, module: str, *, is_package: bool) -> str | None:
    """The absolute module ``node`` imports from, or ``None`` when it is outside the package."""
    if node.level == 0:
        target = node.module or ""
    else:
        package = module if is_package else module.rpartition(".")[0]
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    return target if target == NAME or target.startswith(NAME + ".") else None


def private_reaches(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Where ``source``, the text of ``module``, uses another module's private name."""
    tree = ast.parse(source, module)
    found, modules = private_imports(tree, module, is_package=is_package)
    found.extend(
        f"{module}:{node.lineno} uses {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
        and is_private(node.attr)
    )
    return found


def private_imports(
    tree: ast.Module, module: str, *, is_package: bool
) -> tuple[list[str], set[str]]:
    """The private names ``tree`` imports from the package, and its names for package modules."""
    found: list[str] = []
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = imported_from(node, module, is_package=is_package)
            if target is None or target == module:
                continue
            for alias in node.names:
                if (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir():
                    modules.add(alias.asname or alias.name)  # a module: its privates count
                elif is_private(alias.name):
                    found.append(f"{module}:{node.lineno} imports {target}.{alias.name}")
        elif isinstance(node, ast.Import):
            modules.update(
                alias.asname
                for alias in node.names
                if alias.name.startswith(NAME + ".") and alias.asname
            )
    return found, modules


def test_no_module_imports_a_private_name_of_another() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10  # the walk found the package
    found = [
        reach
        for path in sources
        for reach in private_reaches(
            path.read_text(encoding="utf-8"), module_name(path), is_package=path.stem == "__init__"
        )
    ]
    assert found == []


def test_the_check_sees_a_private_import_and_a_private_attribute() -> None:
    """The rule above would catch both shapes of reaching in."""
    source = "from ._endpoint import _attempt\nfrom . import _wire\nx = _wire._CONTROL_RE\n"
    assert private_reaches(source, "plainid_async._probe") == [
        "plainid_async._probe:1 imports plainid_async._endpoint._attempt",
        "plainid_async._probe:3 uses _wire._CONTROL_RE",
    ]
    assert private_reaches("from ._wire import clean_text\n", "plainid_async._probe") == []
