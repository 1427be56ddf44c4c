"""The README's two set-up commands stay the ones that work: CI runs the README's test
command verbatim, and the suite the README runs first exists and validates."""

import re
from pathlib import Path

from bench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command():
    test_cmd = next(b.strip() for b in _bash_blocks() if "pytest" in b)
    assert test_cmd in (REPO / ".ci" / "run").read_text()


def test_the_readme_main_command_runs_a_valid_bundled_suite():
    main_cmd = next(b.strip() for b in _bash_blocks() if "privbench run" in b)
    suite_path = re.search(r"privbench run (\S+\.yaml)", main_cmd).group(1)
    suite = load_suite(str(REPO / suite_path))
    assert {c.config.data.name for c in suite.cells} <= {"breast_cancer", "digits"}  # no download
