"""mailsink.store in layers: each module imports only those below it, so there is no cycle to
break with an import inside a function; and the package's public names, pinned."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import mailsink.store

STORE = Path(mailsink.store.__file__).parent

# Bottom up: a module may import those before it. The reader stands apart, on the schema and
# the search compiler only.
LAYERS = ["schema", "operations", "wire", "spawn", "writer", "facade"]
ALLOWED = {name: set(LAYERS[:at]) for at, name in enumerate(LAYERS)}
ALLOWED["search"] = {"schema"}  # the search language in SQL, for the reader
ALLOWED["reader"] = {"schema", "search"}

PUBLIC = {
    "MEMORY",
    "SCHEMA_VERSION",
    "IncomingMessage",
    "MessageRecord",
    "Operation",
    "Reader",
    "Serving",
    "SessionEvent",
    "SessionRecord",
    "Store",
    "StoreError",
    "StoreFileError",
    "StoreLocked",
    "Stored",
    "WriterLost",
    "committed_message",
    "default_path",
    "operations",
    "over_limit",
    "resolve_path",
    "run_here",
    "server_running",
}


def store_imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """The store modules a module imports ("__init__" for the package itself), each with
    whether the import is at the module's top level."""
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` at the top: names for the type checker
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            top |= {id(inner) for inner in node.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # A relative import is resolved as Python would, from within mailsink.store.
            module = node.module or ""
            if node.level:
                base = ["mailsink", "store"][: 3 - node.level] if node.level <= 2 else []
                module = ".".join([*base, *([module] if module else [])])
            if module == "mailsink.store":  # a submodule by name, or the package's names
                names = [
                    f"mailsink.store.{alias.name}"
                    if (STORE / f"{alias.name}.py").exists()
                    else "mailsink.store.__init__"
                    for alias in node.names
                ]
            else:
                names = [module]
        for name in names:
            if name == "mailsink.store":
                name = "mailsink.store.__init__"
            if name.startswith("mailsink.store."):
                found.append((name.split(".")[2], id(node) in top))
    return found


def imports_of_each_module() -> dict[str, list[tuple[str, bool]]]:
    return {
        path.stem: store_imports(ast.parse(path.read_text(), str(path)))
        for path in sorted(STORE.glob("*.py"))
    }


def test_every_store_module_has_a_layer():
    assert set(imports_of_each_module()) == {*ALLOWED, "__init__"}


def test_each_store_module_imports_only_the_layers_below_it():
    for module, imports in imports_of_each_module().items():
        if module == "__init__":
            continue
        imported = {name for name, _ in imports}
        assert imported <= ALLOWED[module], f"{module} imports {sorted(imported - ALLOWED[module])}"


def test_no_store_module_imports_anything_of_the_store_inside_a_function():
    for module, imports in imports_of_each_module().items():
        deferred = sorted(name for name, at_top in imports if not at_top)
        assert not deferred, f"{module} imports {deferred} inside a function"


def test_there_is_no_import_cycle_in_the_store():
    graph = {
        module: {name for name, _ in imports}
        for module, imports in imports_of_each_module().items()
    }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_public_names_of_mailsink_store_are_pinned():
    assert sorted(mailsink.store.__all__) == sorted(PUBLIC)
    assert len(mailsink.store.__all__) == len(PUBLIC)  # none twice
    for name in PUBLIC:
        assert hasattr(mailsink.store, name), name
    # Everything public the package holds is listed (its layers are submodules, not names).
    held = {
        name
        for name, value in vars(mailsink.store).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert held == PUBLIC - {"operations"}
