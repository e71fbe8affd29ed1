import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    # The first Python block of the README is self-contained: it must keep working as written.
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["ess"].shape == (2, 4, 255)
    assert namespace["sigma"].shape == (2, 4, 255, 16)


def test_readme_quickstart_names_the_commands_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/ess-train" in text and "python -m pytest -q" in text
    assert "python\" -m pytest -q" in ci and "torch==2.13.0" in ci
