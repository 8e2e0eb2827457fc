"""Prints the package's folders and modules, each with the first sentence of its docstring: the tree in README.md
and docs/architecture.md is this output (tests/unit/test_docs_tree.py checks that every module is listed).

    python scripts/module_tree.py
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "comfy_worker"
# The job's journey first, the shared ground last.
ORDER = ["worker.py", "jobs", "comfy", "fleet", "models", "delivery", "settings"]
WIDTH = 118


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    sentence = first.split(". ")[0].rstrip(".")
    return sentence


def line(prefix: str, name: str, text: str) -> str:
    head = f"{prefix}{name}"
    room = WIDTH - max(len(head), 30) - 2
    text = text if len(text) <= room else text[: room - 1].rstrip() + "…"
    return f"{head:<30}  {text}".rstrip()


def entries(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir() if (p.suffix == ".py" and p.name != "__init__.py") or
             (p.is_dir() and (p / "__init__.py").exists())]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda p: (rank.get(p.name, len(ORDER)), p.is_dir(), p.name))


def tree() -> list[str]:
    lines = ["src/comfy_worker/"]
    top = entries(PACKAGE)
    for i, path in enumerate(top):
        last = i == len(top) - 1
        branch, stem = ("└─ ", "   ") if last else ("├─ ", "│  ")
        if path.is_dir():
            lines.append(line(branch, f"{path.name}/", summary(path / "__init__.py")))
            inner = entries(path)
            for j, module in enumerate(inner):
                lines.append(line(stem + ("└─ " if j == len(inner) - 1 else "├─ "), module.name, summary(module)))
        else:
            lines.append(line(branch, path.name, summary(path)))
    return lines


if __name__ == "__main__":
    print("\n".join(tree()))
