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
