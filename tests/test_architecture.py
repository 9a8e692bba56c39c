"""The shape of the code, checked rather than hoped for: layers that depend one way, no import
cycles, short functions, one home for each concept, and no code that only tests use."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import chargen

PACKAGE = Path(chargen.__file__).parent

LAYERS = [
    ("chargen.errors", "chargen.files", "chargen.config", "chargen.metrics"),
    ("chargen.text",),
    ("chargen.model",),
    ("chargen.training",),
    ("chargen.runs",),
    ("chargen.generation",),
    ("chargen.music",),
    ("chargen.api",),
    ("chargen.cli", "chargen.server", "chargen.__main__"),
]
"""From the ground floor up: a module imports only from its own layer and those below it."""

LONGEST_FUNCTION = 60
LONG_PARSERS: set[str] = set()
"""Functions allowed over the limit (at most two parsers, each explained here): none now."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    for number, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def imports_of(module: str) -> set[str]:
    """The chargen modules ``module`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found - {module}


FACADE = "chargen"  # the package's __init__: the public names, imported lazily from the layers


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != FACADE:
            layer_of(module)


def test_modules_import_only_from_their_layer_and_below():
    upward = [
        f"{module} -> {target}"
        for module in MODULES
        if module != FACADE
        for target in imports_of(module)
        if target != FACADE and layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_there_is_no_import_cycle():
    graph = {m: imports_of(m) - {FACADE} for m in MODULES if m != FACADE}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module) :]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_functions_are_short():
    long = [
        f"{module}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
        and f"{module}:{node.name}" not in LONG_PARSERS
    ]
    assert long == []


# ------------------------------------------------------------------------ one home each


def modules_containing(pattern: str) -> set[str]:
    regex = re.compile(pattern)
    return {name for name, path in MODULES.items() if regex.search(path.read_text("utf-8"))}


@pytest.mark.parametrize(
    "what, pattern, home",
    [
        ("a metrics type", r"def bits_per_char\b", {"chargen.metrics"}),
        ("the reader of users' text", r"""decode\(["']utf-8["']""", {"chargen.files"}),
        ("the streaming reader of corpora", r"getincrementaldecoder", {"chargen.text.corpus"}),
        (
            "the run directory's file names",
            r"""["'](run\.json|tokenizer\.json|metrics\.jsonl|(best|last)\.safetensors)["']""",
            {"chargen.runs.store"},
        ),
        (
            "the tokenizers library",
            r"^from tokenizers|^import tokenizers",
            {"chargen.text.tokenizer"},
        ),
        ("the tokenizer's internals", r"\._hf\b|\.hf\b", {"chargen.text.tokenizer"}),
        ("asking whether a level is abc", r"""level\s*[!=]=\s*["']abc["']""", set()),
        ("a SIGINT handler", r"signal\.signal\(signal\.SIGINT", {"chargen.cli.base"}),
        ("JSON lines on stdout", r"allow_nan=False", {"chargen.cli.base"}),
    ],
)
def test_one_home_for_each_concept(what, pattern, home):
    found = modules_containing(pattern)
    assert found <= home, f"{what} lives in {sorted(found - home)} as well as in {sorted(home)}"


# ------------------------------------------------------------------- no code for tests only

DYNAMIC = {
    # Measure's token handlers, looked up by getattr(self, f"_{match.lastgroup}")
    *(f"_{group}" for group in re.findall(r"\?P<(\w+)>", (PACKAGE / "music/bars.py").read_text())),
}


REGISTRARS = {"command", "get", "post", "middleware", "exception_handler"}


def registered(node: ast.AST) -> bool:
    """A function a decorator registers (``@group.command(...)``, ``@app.get(...)``): click or
    the web framework calls it, not our code."""
    decorators = getattr(node, "decorator_list", [])
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in REGISTRARS
        for d in decorators
    )


def defined_names() -> dict[str, str]:
    """Every function, method and class name defined in chargen, with where."""
    names = {}
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            if isinstance(node, kinds) and not registered(node):
                names.setdefault(node.name, module)
    return names


def test_nothing_in_the_package_is_used_only_by_tests():
    words: dict[str, int] = {}
    for path in MODULES.values():
        for word in re.findall(r"[A-Za-z_]\w*", path.read_text(encoding="utf-8")):
            words[word] = words.get(word, 0) + 1
    public = set(chargen.__all__)
    unused = sorted(
        f"{module}.{name}"
        for name, module in defined_names().items()
        if words.get(name, 0) < 2  # its own definition is the only mention
        and name not in public
        and name not in DYNAMIC
        and not (name.startswith("__") and name.endswith("__"))
    )
    assert unused == []
