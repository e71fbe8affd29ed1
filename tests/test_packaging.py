"""What a regular (non-editable) install ships: every package of the source tree."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (the dev extra)
    import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_listed_for_installation():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ess_reg").rglob("__init__.py")}
    found |= {"ess_reg.models"}  # models/ installs as ess_reg.models (package-dir)
    missing = sorted(found - listed)
    assert not missing, f"pyproject.toml's [tool.setuptools] packages lacks {missing}: a plain install would miss them"
    assert (ROOT / "models" / "__init__.py").is_file() and setuptools["package-dir"]["ess_reg.models"] == "models"


def test_the_core_and_zoo_tests_need_no_harness():
    # tests/core and tests/zoo run where only the core is installed (torch): none of them may
    # import the harness or its dependencies; those tests belong in tests/harness.
    heavy = ("ess_reg.harness", "mlflow", "hydra", "omegaconf")
    for path in sorted((ROOT / "tests" / "core").glob("*.py")) + sorted((ROOT / "tests" / "zoo").glob("*.py")):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1 and words[1].startswith(heavy):
                raise AssertionError(f"{path.relative_to(ROOT)} imports {words[1]}: move that test to tests/harness")
