"""Package layout only; everything else is in pyproject.toml.

One distribution, three source roots, all imported under `mlbus`:
- `libs/mlbus`: the shared library, what services share and nothing more;
- `services/<name>`: one folder per service, installed as `mlbus.<name>`;
- `app/mlbus/<name>`: the shell around them (the CLI, `mlbus up`'s runtime, the
  demo, the example generator, the soak), installed as `mlbus.<name>`. It keeps
  the `mlbus/` level so that mypy resolves `mlbus.<name>` there (`mypy_path`).

A new folder (with an `__init__.py`) under `services/` or `app/mlbus/` is picked
up here without editing anything; re-run `make install` after adding one.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
packages = find_packages("libs", include=["mlbus", "mlbus.*"])
package_dir = {"mlbus": "libs/mlbus"}
for root in ("services", "app/mlbus"):
    for folder in sorted((ROOT / root).iterdir()):
        if (folder / "__init__.py").is_file():
            name = f"mlbus.{folder.name}"
            package_dir[name] = f"{root}/{folder.name}"
            packages.append(name)
            packages += [f"{name}.{sub}" for sub in find_packages(f"{root}/{folder.name}")]

setup(packages=packages, package_dir=package_dir)
