"""Package layout only; everything else is in pyproject.toml.

One distribution, two source roots: the shared library in `libs/mlbus` and one
folder per service in `services/<name>`, installed as `mlbus.<name>`. A new
service folder (with an `__init__.py`) is picked up here without editing
anything; re-run `make install` after adding one.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
packages = find_packages("libs", include=["mlbus", "mlbus.*"])
package_dir = {"mlbus": "libs/mlbus"}
for service in sorted((ROOT / "services").iterdir()):
    if (service / "__init__.py").is_file():
        name = f"mlbus.{service.name}"
        package_dir[name] = f"services/{service.name}"
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(f"services/{service.name}")]

setup(packages=packages, package_dir=package_dir)
