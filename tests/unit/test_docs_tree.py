"""The module tree in README.md and docs/architecture.md is the one the folders hold (scripts/module_tree.py prints
it), and no module of the package, the bench or the scripts is over 400 lines."""

from __future__ import annotations

import importlib.util

import pytest

from comfy_worker.settings import REPO_ROOT

MAX_LINES = 400


def printed_tree() -> str:
    spec = importlib.util.spec_from_file_location("module_tree", REPO_ROOT / "scripts" / "module_tree.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return "\n".join(module.tree())


@pytest.mark.parametrize("page", ["README.md", "docs/architecture.md"])
def test_the_documented_tree_is_the_folders_tree(page: str):
    tree = printed_tree()
    assert "├─ jobs/" in tree and "runner.py" in tree  # the printer found the package
    assert tree in (REPO_ROOT / page).read_text(), f"{page}: paste the output of `python scripts/module_tree.py`"


def test_no_source_file_is_over_400_lines():
    sources = [p for folder in ("src", "bench", "scripts") for p in (REPO_ROOT / folder).rglob("*.py")]
    assert len(sources) > 50
    long = {str(p.relative_to(REPO_ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_tree_printer_lists_every_module():
    package = REPO_ROOT / "src" / "comfy_worker"
    tree = printed_tree()
    modules = [p for p in package.rglob("*.py") if p.name != "__init__.py"]
    missing = [str(p.relative_to(package)) for p in modules if f"─ {p.name}" not in tree]
    assert not missing, missing
