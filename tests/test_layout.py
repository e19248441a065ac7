"""The package's shape: no import cycles, exceptions in a leaf module, light subpackage files,
and every repository path that code, comments and docs name exists.

Imports are read from the source (no module is imported), including those inside functions: a
function-level import hides a cycle from Python at import time, not from the next reader.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
PACKAGES = ("ml", "expectations")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((PROJECT_DIR / package).rglob("*.py"))
    }


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports anywhere in its text: `from a.b import c`
    names module a.b.c where c is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found & modules.keys()


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_cycle_finder_finds_a_cycle_hidden_three_modules_deep():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_reads_function_level_imports(tmp_path: Path):
    source = tmp_path / "module.py"
    source.write_text("def late():\n    from ml.models import registry\n    import ml.config\n")
    modules = {"ml.models": Path(), "ml.models.registry": Path(), "ml.config": Path()}
    assert imported_modules(source, modules) == {"ml.models.registry", "ml.config"}


def test_no_import_cycle_inside_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles (each a set of modules importing one another): " + "; ".join(
        " <-> ".join(component) for component in found
    )


def test_exceptions_live_in_a_leaf_module():
    graph = import_graph()
    # ConfigError masks its own message, so ml.errors may import leaves such as the masking rule.
    leaves = {name for name, imported in graph.items() if not imported}
    assert graph["ml.errors"] <= leaves, "ml/errors.py may import only modules that import nothing"
    for name, path in package_modules().items():
        if name == "ml.errors":
            continue
        defined = [
            node.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef)
            and any(
                getattr(base, "id", getattr(base, "attr", "")).endswith(("Error", "Exception"))
                for base in node.bases
            )
        ]
        assert not defined, f"{name} defines exceptions {defined}: they belong in ml/errors.py"


def test_subpackages_hold_only_a_docstring_in_their_init():
    """Importing one module of a subpackage must not import its siblings (import cost, cycles)."""
    for init in (PROJECT_DIR / "ml").glob("*/__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), (
            f"{init} holds more than a docstring"
        )


REPOSITORY_PATH = re.compile(
    r"(?<![\w/.-])((?:ml|dags|tests|bench|docs|expectations|dbt_project|deploy)/[\w/.-]*\w"
    r"\.(?:py|md|sql|yml|yaml|sh|json|png|csv))\b"
)


def test_every_repository_path_named_in_code_and_docs_exists():
    """A module moved or renamed leaves no comment, docstring or document pointing at nothing."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
    ).stdout.split()
    texts = [
        PROJECT_DIR / name
        for name in tracked
        if Path(name).suffix in {".py", ".md", ".yml", ".yaml", ".sql", ".toml", ".sh"}
        or Path(name).name in {"Makefile", "Dockerfile", ".env.example"}
    ]
    missing = sorted(
        f"{path.relative_to(PROJECT_DIR)} names {match.group(1)}"
        for path in texts
        if path.is_file()
        for match in REPOSITORY_PATH.finditer(path.read_text())
        if not (PROJECT_DIR / match.group(1)).exists()
    )
    assert not missing, missing
