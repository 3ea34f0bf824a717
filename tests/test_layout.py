"""The package's shape, checked: layers without import cycles, small modules, one owner per library.

These are the rules of DESIGN.md that a refactor breaks silently, so they are tests rather than
review comments. Imports are read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aggregator"
MAX_LINES = 600
# Each third-party library has exactly one module that imports it (DESIGN.md, "the stage table").
LIBRARY_OWNERS = {
    "feedparser": {"aggregator.ingest.parse", "aggregator.ingest.tuning"},
    "httpx": {"aggregator.ingest.fetch"},
    "sqlite_utils": {"aggregator.store.schema"},
    "slack_sdk": {"aggregator.notify.slack"},
    "apscheduler": {"aggregator.service.serve"},
    "click": {"aggregator.cli.*"},  # the cli package is the click layer
    "tomllib": {"aggregator.config.load", "aggregator.config.feeds_file"},
    # training only: the service scores exported weights (tests/test_relevance_model.py)
    "sklearn": {"aggregator.relevance.train"},
    "numpy": {"aggregator.relevance.train"},
    "scipy": {"aggregator.relevance.train"},
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str) -> set[str]:
    """Every module named by an import anywhere in the file (also inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for target in imports_of(path, name):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_itself_back() -> None:
    # A package's __init__ re-exporting its children is not a cycle worth failing on only when it
    # is the whole package's face; there are none such, so every edge counts.
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_module_passes_the_size_limit() -> None:
    big = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_each_library_is_imported_by_its_owner_only() -> None:
    users: dict[str, set[str]] = defaultdict(set)
    for name, path in modules().items():
        for target in imports_of(path, name):
            top = target.split(".")[0]
            if top in LIBRARY_OWNERS:
                users[top].add(name)
    for library, owners in LIBRARY_OWNERS.items():
        strays = {u for u in users[library] if not any(_owns(o, u) for o in owners)}
        assert not strays, f"{library} imported by {sorted(strays)}"


def _owns(owner: str, module: str) -> bool:
    """``owner`` names a module, or a package's modules as ``package.*``."""
    if owner.endswith(".*"):
        return module.startswith(owner[:-1])
    return module == owner


def test_the_pure_core_does_no_io_and_reads_no_clock() -> None:
    """Rules, stories, text and the cycle's planner take ``now`` and data; they never reach out."""
    pure = ("aggregator.rules", "aggregator.stories", "aggregator.text", "aggregator.cycle.plan",
            "aggregator.cycle.schedule")  # fmt: skip
    banned = {"socket", "sqlite3", "subprocess", "httpx", "sqlite_utils", "slack_sdk", "time"}
    for name, path in modules().items():
        if not name.startswith(pure):
            continue
        source = path.read_text(encoding="utf-8")
        used = {t.split(".")[0] for t in imports_of(path, name)} & banned
        assert not used, f"{name} imports {used}"
        for clock in ("datetime.now(", "date.today(", "time.time(", "time.monotonic("):
            assert clock not in source, f"{name} reads the clock ({clock})"


if __name__ == "__main__":
    sys.exit(print(find_cycle(graph())))


def readme_layers() -> dict[str, int]:
    """The rank of each folder or module in README's layer table ("How it works")."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8").splitlines()
    start = readme.index("| folder | what it holds | library |") + 2
    ranks: dict[str, int] = {}
    for rank, line in enumerate(readme[start:]):
        if not line.startswith("|"):
            break
        for name in line.split("|")[1].replace("`", "").split(","):
            ranks[name.strip().removesuffix("/").removesuffix(".py")] = rank
    return ranks


def test_each_layer_imports_only_from_the_layers_above_it_in_the_readme() -> None:
    ranks = readme_layers()
    layer = {name: ranks.get(name.split(".")[1]) for name in modules() if "." in name}
    unlisted = sorted({name.split(".")[1] for name, rank in layer.items() if rank is None})
    assert not unlisted, f"README's layer table does not list {unlisted}"
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if "." in source and "." in target and (layer[target] or 0) > (layer[source] or 0)
    )
    assert not upward, "imports from a layer listed below in README's table:\n" + "\n".join(upward)
