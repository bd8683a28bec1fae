"""Rules of the code's layout (docs/design.md), checked on the sources: what a library may start, and what a
test may touch."""

import re

from conftest import PACKAGES, REPO

FRONT_ENDS = {"xray/cli.py", "xray/__main__.py", "xray/__init__.py"}  # and xray/commands/, the subcommands


def _lines(paths):
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            yield f"{path.relative_to(REPO)}:{number}", line


def test_no_library_starts_the_command_line():
    """Worker and tuner processes are started as their own modules with the resolved job (xray.trainer.worker,
    xray.tuner.session), never as `python -m xray ...`; only the command line's own files name it."""
    pattern = re.compile(r"""["']-m["'],\s*["']xray["']|-m xray(?![.\w])|\bxray\.cli\b|from xray import cli""")
    sources = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))
               if str(p.relative_to(REPO)) not in FRONT_ENDS and p.parent != REPO / "xray" / "commands"]
    assert [f"{where}: {line.strip()}" for where, line in _lines(sources) if pattern.search(line)] == []


def test_no_test_touches_a_private_name_of_the_project():
    """Tests go through public names: no `module._name` or `object._name` of project code, no `from x import _name`.
    A test's own helpers (`self._x`, `from test_upload import _tree`) are the test's business."""
    attribute = re.compile(r"(?<![\w.])(?!self\b|os\b|sys\b)([a-z_][a-z_0-9]*)\._[a-z][a-z_0-9]*")
    private_import = re.compile(r"^\s*from (?!test_|conftest)[\w.]+ import .*\b_[a-z]")
    tests = sorted(p for p in (REPO / "tests").glob("*.py") if p.name != "test_layout.py")
    found = [f"{where}: {line.strip()}" for where, line in _lines(tests)
             if (attribute.search(line) and "__" not in attribute.search(line).group(0)) or private_import.search(line)]
    assert found == []


# The packages each package of xray may import (docs/design.md's picture). The front-end (xray/cli.py and
# xray/commands/) may import all of them; the modules at xray/'s top (__init__, __main__, cli) are front-end too.
ALLOWED = {"data": set(), "trainer": {"data"}, "tuner": {"data", "trainer"}, "serving": {"data", "trainer", "clients"},
           "clients": {"data", "serving"}, "cluster": {"data", "trainer"}, "localcluster": {"trainer"}}


def test_the_packages_import_only_what_the_design_picture_shows():
    pattern = re.compile(r"^\s*(?:from\s+xray\.(\w+)|from\s+xray\s+import\s+(\w+)|import\s+xray\.(\w+))", re.M)
    found = {}
    for package in ALLOWED:
        for path in (REPO / "xray" / package).rglob("*.py"):
            names = {next(g for g in groups if g) for groups in pattern.findall(path.read_text())}
            found.setdefault(package, set()).update(names - {package})
    assert {package: found.get(package, set()) - allowed for package, allowed in ALLOWED.items()} == \
        {package: set() for package in ALLOWED}


def test_every_package_of_xray_has_its_place_in_the_picture():
    """A new package under xray/ is placed in the picture (ALLOWED, docs/design.md) before it is used."""
    packages = {p.parent.name for p in (REPO / "xray").glob("*/__init__.py")}
    assert packages - {"commands"} == set(ALLOWED)


def test_the_project_installs_one_top_level_name():
    """Everything lives under xray: no generic top-level package (trainer, serving, ...) in a user's site-packages."""
    assert PACKAGES == ("xray",)
    assert sorted(p.parent.name for p in REPO.glob("*/__init__.py")) == ["bench", "xray"]  # bench is not installed


def test_no_module_of_the_project_is_over_400_lines():
    """Issue 24's bound: a module that long is doing several jobs; split it at its seam."""
    long = {str(p.relative_to(REPO)): n for package in PACKAGES for p in (REPO / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def _strings_in_code(path):
    """Every string constant of a module but its docstrings (module, class, function): what it can say at run time."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_library_names_a_flag_of_the_command_line():
    """Libraries name their settings their own way (num_shards, a config key, a file); the command line adds its flags
    (xray.commands.user_error). Checked on what the libraries can print or raise: their string constants, docstrings
    (usage examples) aside, against every long flag `xray` defines."""
    from xray.cli import build_parser

    flags, parsers = set(), [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:  # noqa: SLF001 - argparse's own structure; not project code
            flags.update(s for s in action.option_strings if s.startswith("--") and s != "--help")
            if hasattr(action, "add_parser"):  # the subcommands
                parsers.extend(action.choices.values())
    assert {"--num-shards", "--workdir", "--batch-size", "--force"} <= flags
    pattern = re.compile(r"--[a-z][a-z-]*")
    found = []
    for package in ("data", "trainer", "tuner", "serving", "clients"):
        for path in sorted((REPO / "xray" / package).rglob("*.py")):
            for line, text in _strings_in_code(path):
                found += [f"{path.relative_to(REPO)}:{line}: {flag}" for flag in pattern.findall(text) if flag in flags]
    assert found == []
