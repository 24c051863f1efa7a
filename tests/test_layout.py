"""The layout the project keeps in docs/architecture.json holds against the
code: at most ten scripts at the root, every module of the package on a
part, no import the picture forbids, every import between parts drawn, a
docstring in each folder's __init__.py, and files small enough to read at
once."""

import ast
import json

import pytest

from conftest import ROOT

LAYOUT = json.loads((ROOT / "docs" / "architecture.json").read_text())
PACKAGE = "hks"
MAX_SCRIPTS = 10
MAX_LINES = 600
MAX_LINES_OF = {"hyperopt_optimize.py": 450, "neural_net.py": 450}
README_MAX_LINES = 250


def scripts():
    return sorted(p.name for p in ROOT.glob("*.py"))


def modules():
    """Every Python file of the layout: the scripts, then the package's."""
    return scripts() + sorted(str(p.relative_to(ROOT)) for p in (ROOT / PACKAGE).rglob("*.py"))


def part_of(path):
    """The part a file is on: the longest of the parts' paths that holds it
    (a file, or a folder written with its trailing slash)."""
    best = (None, "")
    for part, spec in LAYOUT["parts"].items():
        for entry in spec["is"]:
            if (path == entry or (entry.endswith("/") and path.startswith(entry))) and (
                    len(entry) > len(best[1])):
                best = (part, entry)
    return best[0]


def module_file(dotted):
    """The file of a module of this project (`hks.core.flags`, `neural_net`), or None."""
    path = ROOT.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return str(path.with_suffix(".py").relative_to(ROOT))
    if (path / "__init__.py").is_file():
        return str((path / "__init__.py").relative_to(ROOT))
    return None


def imported_files(path):
    """Every project file `path` imports, at the top or inside a function."""
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(module_file(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(module_file(f"{node.module}.{alias.name}") or module_file(node.module)
                         for alias in node.names)
    return found - {None}


def test_the_root_holds_only_the_scripts_a_user_runs():
    assert len(scripts()) <= MAX_SCRIPTS, f"{len(scripts())} scripts at the root: {scripts()}"


def test_every_module_is_on_a_part_and_every_part_exists():
    listed = [path for spec in LAYOUT["parts"].values() for path in spec["is"]]
    assert len(listed) == len(set(listed)), "a path is on two parts"
    missing = [path for path in modules() if part_of(path) is None]
    assert not missing, f"docs/architecture.json puts these on no part: {missing}"
    for part, spec in LAYOUT["parts"].items():
        assert all((ROOT / path).exists() for path in spec["is"]), part


def test_each_folder_of_the_package_says_what_it_holds():
    for folder in [ROOT / PACKAGE, *sorted(p for p in (ROOT / PACKAGE).iterdir() if p.is_dir()
                                           and p.name != "__pycache__")]:
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder} has no __init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert 2 <= len(doc.splitlines()) <= 4, f"{init}: say in two or three lines what it holds"


@pytest.mark.parametrize("never", LAYOUT["never"], ids=lambda n: f"{n[0]}-{n[1]}")
def test_no_import_the_layout_forbids(never):
    source, target, why = never
    for path in modules():
        if part_of(path) == source:
            found = {m for m in imported_files(path) if part_of(m) == target}
            assert not found, f"{path} imports {sorted(found)}: never {source} -> {target} ({why})"


def test_the_drawn_arrows_exist_and_none_is_missing():
    found = {(part_of(path), part_of(module)) for path in modules()
             for module in imported_files(path) if part_of(path) != part_of(module)}
    drawn = {(arrow[0], arrow[1]) for arrow in LAYOUT["arrows"]}
    assert found - drawn == set(), "imports between parts that the picture does not draw"
    assert drawn - found == set(), "arrows in the picture that no import makes"


def test_files_stay_small_enough_to_read_at_once():
    for path in modules():
        lines = len((ROOT / path).read_text().splitlines())
        assert lines <= MAX_LINES_OF.get(path, MAX_LINES), f"{path}: {lines} lines"
    readme = len((ROOT / "README.md").read_text().splitlines())
    assert readme <= README_MAX_LINES, f"README.md: {readme} lines; move details to docs/"


def test_the_readme_names_every_flag_of_the_search_with_its_variable():
    import hyperopt_optimize
    from hks.core import flags
    from hks.mongo import mongo_settings
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "mongodb.md").read_text()
    for kind in (flags.SearchSettings, mongo_settings.DriverSettings):
        for option in flags.options_of(kind).values():
            if option.flag:
                assert f"`{option.flag}" in readme, option.flag
            assert option.env in readme, option.env
    assert hyperopt_optimize.build_parser().format_help()  # the flags exist as documented
