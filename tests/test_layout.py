"""The package's seams, read from its source: no module reads another module's private
names, torch is patched only where the layout says, and each file keeps to one job."""

from __future__ import annotations

import ast
import pathlib

import esper_lifetimes

PKG = pathlib.Path(esper_lifetimes.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out[name] = p
    return out


MODULES = _modules()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _cross_private(modname: str, path: pathlib.Path) -> list[str]:
    """``other._name`` reads and ``from other import _name`` imports, where ``other`` is
    another module of this package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}  # local name -> module of the package
    found = []
    pkg = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    aliases[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in MODULES:
                    aliases[a.asname or a.name] = full
                elif base in MODULES and base != modname and _private(a.name) and a.name != "_core":
                    found.append(f"{modname}:{node.lineno}: from {base} import {a.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
            and aliases[node.value.id] != modname
            and node.attr != "_core"
        ):
            found.append(f"{modname}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_reads_another_modules_private_names():
    found = []
    for name, path in MODULES.items():
        found += _cross_private(name, path)
    assert not found, "\n".join(found)


def test_the_checker_finds_a_private_read(tmp_path):
    # the check above can fail: a module reading another's private name is found
    p = tmp_path / "probe.py"
    p.write_text(
        "from esper_lifetimes import patches\n"
        "from esper_lifetimes.tracking import memory\n"
        "from esper_lifetimes.sites import _getframe\n"
        "x = patches._live\n"
        "y = memory.span\n"
    )
    found = _cross_private("esper_lifetimes.probe", p)
    assert found == [
        "esper_lifetimes.probe:3: from esper_lifetimes.sites import _getframe",
        "esper_lifetimes.probe:4: esper_lifetimes.patches._live",
    ]


_PATCHED_ROOTS = ("torch", "threading")


def _patches_of_torch(path: pathlib.Path) -> list[str]:
    """Assignments to attributes of torch or threading (or of names imported from them),
    and ``setattr``/``delattr`` calls whose first argument is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in _PATCHED_ROOTS:
                    roots.add(a.asname or a.name.split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PATCHED_ROOTS
        ):
            roots.update(a.asname or a.name for a in node.names)

    def rooted(e: ast.expr) -> bool:
        while isinstance(e, ast.Attribute):
            e = e.value
        return isinstance(e, ast.Name) and e.id in roots

    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for tg in targets:
            if isinstance(tg, ast.Attribute) and rooted(tg.value):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(tg)} = ...")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
            and rooted(node.args[0])
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_torch_is_patched_only_in_patches_py():
    # every other module hands patches.py its wrappers (the patch table, a PatchSet)
    found = []
    for name, path in MODULES.items():
        if name != "esper_lifetimes.patches":
            found += _patches_of_torch(path)
    assert not found, "\n".join(found)


def test_the_patch_checker_finds_a_patch(tmp_path):
    p = tmp_path / "probe.py"
    p.write_text(
        "import torch\nimport threading as th\nfrom torch import Tensor\n"
        "torch.compile = None\nth.Thread.start = None\nsetattr(Tensor, 'item', None)\n"
        "x = object()\nx.attr = 1\n"
    )
    assert len(_patches_of_torch(p)) == 3
