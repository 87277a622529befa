"""The shape of the code: layers, import cycles, typed actor calls, the client's privates.

Read off the source with ``ast`` (every import counts, also those inside functions and
under ``TYPE_CHECKING``), so a change that breaks the structure fails here, whoever
makes it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folder -> package, as pyproject.toml maps them
PACKAGES = {"letta_ray": "letta_ray", "actors": "letta_ray.actors", "serve": "letta_ray.serve",
            "sim": "letta_ray.sim", "cli": "letta_ray.cli", "local_llm": "letta_ray.local_llm",
            "fake_llm_server": "letta_ray.fake_llm_server"}
SHELLS = tuple(p for p in PACKAGES.values() if p != "letta_ray")
# The package's own __init__ re-exports the driver API (connect, Client) lazily: the one
# entry point allowed to name a shell.
PUBLIC_ENTRY = "letta_ray"


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (its own package's modules resolved; others by their name)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                yield full if full in MODULES else source


def project_graph() -> dict[str, set[str]]:
    return {name: {m for m in imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}


def is_core(name: str) -> bool:
    return name == "letta_ray" or (name.startswith("letta_ray.") and not name.startswith(SHELLS))


def test_no_two_modules_import_each_other_directly_or_through_others() -> None:
    graph = project_graph()
    # Tarjan's strongly connected components: every component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_core_imports_no_shell_and_no_web_or_ray_library() -> None:
    foreign = ("ray", "fastapi", "starlette", "uvicorn", "typer", "rich")
    bad = []
    for name, path in MODULES.items():
        if not is_core(name) or name == PUBLIC_ENTRY:
            continue
        for imported in imports(name, path):
            top = imported.split(".")[0]
            if imported.startswith(SHELLS) or top in foreign:
                bad.append(f"{name} imports {imported}")
    assert not bad, bad


def test_each_engine_is_imported_by_its_adapter_only() -> None:
    allowed = {"litellm": {"letta_ray.llm"},
               "lancedb": {"letta_ray.storage.archive"},
               "mcp": {"letta_ray.mcp"},
               "duckdb": {"letta_ray.storage._duckdb_file", "letta_ray.storage._duckdb_layout",
                          "letta_ray.storage.metadata", "letta_ray.storage.messages", "letta_ray.storage.runs"}}
    bad = [f"{name} imports {imported}" for name, path in MODULES.items() if is_core(name)
           for imported in imports(name, path)
           if imported.split(".")[0] in allowed and name not in allowed[imported.split(".")[0]]]
    assert not bad, bad


def test_importing_every_core_module_loads_no_ray() -> None:
    core = sorted(name for name in MODULES if is_core(name))
    code = (f"import sys, importlib\nfor m in {core!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _client_privates() -> set[str]:
    """The private methods and attributes of ``Client``, read off its class body and __init__."""
    tree = ast.parse((ROOT / "actors" / "client.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Client"]
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    names |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
              and n.value.id == "self"}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_nothing_outside_the_client_module_touches_the_clients_private_members() -> None:
    privates = _client_privates()
    assert "_atexit" in privates  # the scan sees the class
    files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and p != ROOT / "actors" / "client.py"]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in privates
                    and "client" in ast.unparse(node.value).lower()):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, bad


ACTORISH = re.compile(r"\b(host|store|archive|directory|embedder|actor|handle)\b")


def test_no_actor_is_called_by_a_method_name_in_a_string() -> None:
    """Actor calls go through facades (``store.get_agent(...)``), never a dispatcher such as
    ``store.read("get_agent", ...)`` or ``getattr(handle, "send").remote(...)``."""
    bad = []
    for name, path in MODULES.items():
        if name == "letta_ray.actors._facade":  # the one place that turns a method into a call
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
                if ACTORISH.search(ast.unparse(node.args[0])):
                    bad.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
            if (isinstance(func, ast.Attribute) and func.attr in ("read", "write", "call_agent")
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                bad.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, bad
