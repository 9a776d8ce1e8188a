"""The rooms of the code and who may import whom (`docs/architecture.md`).

Every import statement counts: at module level, inside functions and under
``TYPE_CHECKING``, since each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("facecore", "enrollment", "streamer", "trainer", "facestream")

# (importer prefix, forbidden prefix, why)
FORBIDDEN = (
    ("facecore", "enrollment", "facecore is the base: it imports no other package"),
    ("facecore", "streamer", "facecore is the base: it imports no other package"),
    ("facecore", "trainer", "facecore is the base: it imports no other package"),
    ("facecore", "facestream", "facecore is the base: it imports no other package"),
    ("enrollment", "streamer", "enrollment imports only facecore"),
    ("enrollment", "trainer", "enrollment imports only facecore"),
    ("enrollment", "facestream", "enrollment imports only facecore"),
    ("streamer", "trainer", "streamer and trainer meet only through the store and bundles"),
    ("trainer", "streamer", "streamer and trainer meet only through the store and bundles"),
    ("streamer.live", "streamer.web", "the live pipeline knows no web"),
    ("streamer.live", "streamer.enroll", "the live pipeline knows no enrollment"),
    ("streamer.web", "streamer.enroll", "enrollment adds its routes to the app, not back"),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, known: set[str]) -> set[str]:
    """The project modules that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from streamer.web import tls` imports the module streamer.web.tls
            modules = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update((modules & known) or {node.module})
    return {name for name in found if name in known}


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    files = [path for package in packages for path in sorted((root / package).rglob("*.py"))]
    known = {module_name(path, root) for path in files}
    return {module_name(path, root): imports_of(path, root, known) for path in files}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{importer} imports {imported}: {why}"
        for importer, imported_set in sorted(graph.items())
        for imported in sorted(imported_set)
        for source, target, why in FORBIDDEN
        if within(importer, source) and within(imported, target)
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_forbidden_import() -> None:
    assert violations(import_graph(ROOT)) == []


def test_no_import_cycle() -> None:
    # a package's __init__ importing its own modules would be a harmless cycle; there are none
    assert cycles(import_graph(ROOT)) == []


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    """A tree that breaks each kind of rule once."""
    files = {
        "facecore/__init__.py": "",
        "facecore/a.py": "def f():\n    from streamer.live import b\n",
        "streamer/__init__.py": "",
        "streamer/live/__init__.py": "",
        "streamer/live/b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from streamer.web.c import C\n"
        ),
        "streamer/web/__init__.py": "",
        "streamer/web/c.py": "from streamer.live import b\nimport trainer.d\n",
        "trainer/__init__.py": "",
        "trainer/d.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_checker_finds_each_kind_of_breach(bad_tree: Path) -> None:
    graph = import_graph(bad_tree, ("facecore", "streamer", "trainer"))
    assert violations(graph) == [
        "facecore.a imports streamer.live.b: facecore is the base: it imports no other package",
        "streamer.live.b imports streamer.web.c: the live pipeline knows no web",
        "streamer.web.c imports trainer.d: streamer and trainer meet only through the store "
        "and bundles",
    ]
    assert cycles(graph) == [["streamer.live.b", "streamer.web.c"]]
