"""Check that imports inside ``privformer/`` only run downward, and that no module reaches into
another module's private names. Exit 1 and list every violation, else print a one-line summary.

Layers, lowest first (a module may import its own layer's package and any layer below):

    0 base        privformer.errors, privformer.artifacts, privformer.data
    1 models      privformer.models
    2 approx      privformer.approx
    3 crypto      privformer.crypto.ckks | privformer.crypto.mpc   (siblings: never each other)
    4 protocols   privformer.protocols.stip | .nexus | .cipherprune (siblings: never each other)
    5 transport   privformer.transport
    6 api         privformer.api
    7 cli         privformer.cli

Imports inside functions count too (a lazy import is still a dependency). ``import privformer``
(the package root, which only sets the hub offline and lazily exposes the API) is allowed
everywhere. Usage: ``python .ci/check_layers.py [PACKAGE_DIR]``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS: list[tuple[str, int]] = [
    ("privformer.errors", 0),
    ("privformer.artifacts", 0),
    ("privformer.data", 0),
    ("privformer.models", 1),
    ("privformer.approx", 2),
    ("privformer.crypto.ckks", 3),
    ("privformer.crypto.mpc", 3),
    ("privformer.crypto", 3),
    ("privformer.protocols.stip", 4),
    ("privformer.protocols.nexus", 4),
    ("privformer.protocols.cipherprune", 4),
    ("privformer.protocols", 4),
    ("privformer.transport", 5),
    ("privformer.api", 6),
    ("privformer.cli", 7),
]


def unit_of(module: str) -> tuple[str, int] | None:
    """The (unit, rank) a dotted module name belongs to; the longest matching prefix wins."""
    best = None
    for unit, rank in LAYERS:
        if (module == unit or module.startswith(unit + ".")) and (
            best is None or len(unit) > len(best[0])
        ):
            best = (unit, rank)
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.AST, this: str, is_package: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every privformer import in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("privformer"):
                    found.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                pkg = this.split(".") if is_package else this.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            if base.startswith("privformer"):
                found.append((node.lineno, base, [a.name for a in node.names]))
    return found


def private_attribute_uses(tree: ast.AST, aliases: dict[str, str]) -> list[tuple[int, str]]:
    """``alias._name`` where ``alias`` is an imported privformer module."""
    uses = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            uses.append((node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return uses


def module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to privformer modules by ``import x as y`` / ``from pkg import mod``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("privformer") and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("privformer"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def check(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        this = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        mine = unit_of(this)
        for line, target, names in imports_of(tree, this, path.name == "__init__.py"):
            where = f"{path}:{line}"
            theirs = unit_of(target)
            if target == "privformer" and not names:
                continue  # the package root (offline switch)
            if target == "privformer":  # from privformer import X: X is a subpackage or the API
                theirs = unit_of(f"privformer.{names[0]}")
            if mine is None:  # the package root itself may import anything lazily
                continue
            if theirs is None:
                problems.append(f"{where}: {this} imports {target}, which belongs to no layer")
                continue
            if theirs[1] > mine[1]:
                problems.append(
                    f"{where}: upward import: {this} (layer {mine[1]}) imports {target} "
                    f"(layer {theirs[1]})"
                )
            elif theirs[1] == mine[1] and theirs[0] != mine[0] and mine[1] in (3, 4):
                problems.append(f"{where}: sideways import: {mine[0]} imports {theirs[0]}")
            if target != this:
                for name in names:
                    if name.startswith("_") and not name.startswith("__"):
                        problems.append(f"{where}: {this} imports private {target}.{name}")
        for line, name in private_attribute_uses(tree, module_aliases(tree)):
            problems.append(f"{path}:{line}: {this} uses private {name}")
    return problems


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "privformer")
    problems = check(root.resolve())
    for problem in problems:
        print(problem)
    files = sum(1 for _ in root.rglob("*.py"))
    if problems:
        print(f"check_layers: {len(problems)} violation(s) in {files} modules")
        return 1
    print(f"check_layers: imports run downward in {files} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
