"""Which evlink modules may import which: read from the source with :mod:`ast`.

Every import counts, a lazy one inside a function too; only those under
``if TYPE_CHECKING:`` (annotations, never run) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import evlink

ROOT = Path(evlink.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, package: str) -> set[str]:
    """The modules ``tree`` imports (``from evlink.resolvers import auth`` names the
    submodule when there is one), outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            found |= _imported_names(ast.Module(body=node.orelse, type_ignores=[]), package)
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
        found |= _imported_names(node, package)
    return found


def imports_of(module: str) -> set[str]:
    """The evlink modules ``module`` imports itself, with the packages they are in."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = _imported_names(ast.parse(path.read_text()), package)
    found = set()
    for name in names:
        parts = name.split(".")
        found |= {".".join(parts[:n]) for n in range(1, len(parts) + 1)} & MODULES.keys()
    return found - {module}


def reachable_from(module: str) -> set[str]:
    """Every evlink module importing ``module`` imports in turn (itself excluded)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for imported in imports_of(todo.pop()):
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen - {module, "evlink"}


def test_the_imports_are_read_lazy_ones_included_and_type_checking_ones_not() -> None:
    assert "evlink.resolvers.auth" in imports_of("evlink.resolvers.accounts")
    assert "evlink.resolvers" in imports_of("evlink.resolvers.accounts")
    assert "evlink.ratelimit" in imports_of("evlink.settings")  # inside Settings.check
    assert "evlink.ratelimit" not in imports_of("evlink.services")  # under TYPE_CHECKING
    assert "evlink.schema.results" in imports_of("evlink.schema.context")


def test_the_rate_limiter_imports_nothing_of_the_use_cases_or_the_adapters() -> None:
    """ratelimit.py knows rates, not callers: authentication (evlink.resolvers.auth) and
    the vehicle limit (evlink.resolvers.accounts) use it, never the other way round."""
    above = ("evlink.resolvers", "evlink.schema", "evlink.compat_rest", "evlink.app")
    reached = reachable_from("evlink.ratelimit")
    assert "evlink.models" in reached  # the walk does follow imports
    assert sorted(m for m in reached if m.startswith(above)) == []
