"""Architecture rules and the README's promises that a refactor could silently break."""

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_never_imports_pipelines_or_jobs():
    offenders = []
    for path in (REPO / "grdr_core").rglob("*.py"):
        for name in _imported_modules(path):
            if name.split(".")[0] in {"grdr_pipelines", "grdr_jobs", "pipelines", "jobs"}:
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert offenders == []


def test_reading_an_index_loads_no_decoder_or_model_library():
    code = (
        "import sys, grdr_core, grdr_core.index, grdr_core.search, grdr_core.report\n"
        "heavy = {'decord', 'av', 'torch', 'transformers', 'apache_beam', 'ray'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    test_command = ci_lines[-1]
    assert re.search(r"^" + re.escape(test_command) + r"$", readme, flags=re.MULTILINE), test_command
