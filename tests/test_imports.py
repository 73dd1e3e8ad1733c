"""No import cycle in normlib/: a static check over the source (ast, nothing imported).

Every `import normlib.x`, `from normlib import x`, `from normlib.x import y` and relative form
(`from . import x`, `from .x import y`), at module level and inside functions alike (a lazy import
delays a cycle, it does not remove it), is an edge from the importing module to the module it
names: `from P import x` names the submodule P.x when there is one, else P itself. A module's own
parent packages, which Python initializes before it, are not edges of their own.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def module_names(root, package):
    """{dotted name: path} of every .py file under root/package (a package's __init__ is its name)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(tree, name, is_package, modules, package):
    """The modules of `package` that the module `name` imports, anywhere in its tree."""
    found = set()
    here = name if is_package else name.rpartition(".")[0]  # what `from . import` is relative to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import normlib.a.b` names normlib.a.b, else its parent
                target = target.rpartition(".")[0]
            if target and (target == package or target.startswith(package + ".")):
                found.add(target)
    return found - {name}


def import_graph(root, package="normlib"):
    """{module: set of the package's modules it imports} for every module under root/package."""
    modules = module_names(root, package)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = imported(tree, name, path.name == "__init__.py", modules, package) - parents
    return graph


def cycles(graph):
    """Every import cycle, each as the list of modules around it (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_normlib_has_no_import_cycle():
    graph = import_graph(REPO)
    assert "normlib.norms" in graph["normlib.check"]  # the graph is read from the source
    assert "normlib.pipeline.plan" in graph["normlib.pipeline.cli"] and "normlib.studies.common" in graph
    assert not cycles(graph), "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_the_check_finds_a_cycle_in_a_small_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.sub.c import g  # lazy: still an edge\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\nfrom . import d\nimport os\n")
    (pkg / "sub" / "d.py").write_text("from pkg.sub import c_missing\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.sub.d"} and graph["pkg.sub.d"] == set()  # parent package: no edge
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    (pkg / "sub" / "c.py").write_text("from . import d\n")  # the cycle broken
    assert cycles(import_graph(tmp_path, "pkg")) == []
