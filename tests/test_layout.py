"""The layout the project keeps in docs/architecture.json holds against the
code: every script is on a part, no import the picture forbids exists, and
the files stay small enough to read at once."""

import ast
import json

import pytest

from conftest import ROOT

LAYOUT = json.loads((ROOT / "docs" / "architecture.json").read_text())
MAX_LINES = 600
MAX_LINES_OF = {"hyperopt_optimize.py": 450, "neural_net.py": 450}
README_MAX_LINES = 250


def scripts():
    return sorted(p.name for p in ROOT.glob("*.py"))


def part_of():
    return {path: part for part, spec in LAYOUT["parts"].items() for path in spec["is"]}


def imported_modules(path):
    """Every project module `path` imports, at the top or inside a function."""
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {f"{name}.py" for name in names} & set(scripts())


def test_every_script_is_on_exactly_one_part_and_every_part_exists():
    listed = [path for spec in LAYOUT["parts"].values() for path in spec["is"]]
    assert len(listed) == len(set(listed)), "a file is on two parts"
    assert sorted(p for p in listed if p.endswith(".py")) == scripts(), (
        "docs/architecture.json and the scripts differ: add a new file to its part")
    for part, spec in LAYOUT["parts"].items():
        assert all((ROOT / path).exists() for path in spec["is"]), part


@pytest.mark.parametrize("never", LAYOUT["never"], ids=lambda n: f"{n[0]}-{n[1]}")
def test_no_import_the_layout_forbids(never):
    source, target, why = never
    parts = part_of()
    forbidden = {path for path, part in parts.items() if part == target}
    for path in LAYOUT["parts"][source]["is"]:
        found = imported_modules(path) & forbidden
        assert not found, f"{path} imports {sorted(found)}: never {source} -> {target} ({why})"


def test_the_drawn_arrows_exist_and_none_is_missing():
    parts = part_of()
    found = {(parts[path], parts[module]) for path in scripts() for module in imported_modules(path)
             if parts[path] != parts[module]}
    drawn = {(arrow[0], arrow[1]) for arrow in LAYOUT["arrows"]}
    assert found - drawn == set(), "imports between parts that the picture does not draw"
    assert drawn - found == set(), "arrows in the picture that no import makes"


def test_files_stay_small_enough_to_read_at_once():
    for name in scripts():
        lines = len((ROOT / name).read_text().splitlines())
        assert lines <= MAX_LINES_OF.get(name, MAX_LINES), f"{name}: {lines} lines"
    readme = len((ROOT / "README.md").read_text().splitlines())
    assert readme <= README_MAX_LINES, f"README.md: {readme} lines; move details to docs/"


def test_the_readme_names_every_flag_of_the_search_with_its_variable():
    import flags
    import hyperopt_optimize
    import mongo_settings
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "mongodb.md").read_text()
    for kind in (flags.SearchSettings, mongo_settings.DriverSettings):
        for option in flags.options_of(kind).values():
            if option.flag:
                assert f"`{option.flag}" in readme, option.flag
            assert option.env in readme, option.env
    assert hyperopt_optimize.build_parser().format_help()  # the flags exist as documented
