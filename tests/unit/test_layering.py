"""Imports point down, and the protocol's method names are written once (tfos/_protocol.py)."""

import ast
import pathlib

import tfos
from tfos._protocol import Method

ROOT = pathlib.Path(tfos.__file__).parent
UPPER = ("driver", "executor", "feed", "ml", "compat", "cli")
LEAVES = ("_protocol", "_security", "_roles", "_paths", "_constants", "errors", "_rpc")
#: For each top-level package or module of tfos, the packages it must not import.
FORBIDDEN = {"executor": ("driver",), "feed": ("executor", "driver"), **{leaf: UPPER for leaf in LEAVES}}


def trees():
    for path in sorted(ROOT.rglob("*.py")):
        yield path.relative_to(ROOT), ast.parse(path.read_text(), str(path))


def tfos_imports(tree):
    """Every ``tfos.*`` name a module imports, at module level or inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "tfos uses absolute imports only"
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_imports_point_down():
    upward = []
    for path, tree in trees():
        layer = path.parts[0].removesuffix(".py")
        for name in tfos_imports(tree):
            parts = name.split(".")
            if parts[0] == "tfos" and len(parts) > 1 and parts[1] in FORBIDDEN.get(layer, ()):
                upward.append(f"tfos/{path} imports {name}")
    assert not upward, "upward imports; move the shared piece into a neutral module:\n" + "\n".join(upward)


def test_method_names_are_written_once():
    """No module but tfos/_protocol.py spells a control method (in a ``.call(...)``, a handler map, ...)."""
    names = {m.value for m in Method}
    literal = [f"tfos/{path}:{node.lineno} {node.value!r}" for path, tree in trees() if str(path) != "_protocol.py"
               for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names]
    assert not literal, "use tfos._protocol.Method (or a tfos._rpc.NodeClient method):\n" + "\n".join(literal)
