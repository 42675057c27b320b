"""The layout promises of STYLE.md, checked on the source tree.

- a service never imports another service (they talk only through Kafka);
- the shared library never imports a service;
- every service folder is a package with `__main__.py` and a README.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
SERVICE_NAMES = {
    "ingestion",
    "features",
    "trainer",
    "registry",
    "inference",
    "drift",
    "outcomes",
    "console",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def services_imported(path: Path) -> set[str]:
    return {
        parts[1]
        for module in imported_modules(path)
        if (parts := module.split("."))[0] == "mlbus"
        and len(parts) > 1
        and parts[1] in SERVICE_NAMES
    }


def service_dirs() -> list[Path]:
    return sorted(p for p in SERVICES.iterdir() if (p / "__init__.py").is_file())


def test_the_checker_sees_service_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from mlbus.registry import store\nimport mlbus.inference._server\n")
    assert services_imported(sample) == {"registry", "inference"}


@pytest.mark.parametrize("service", service_dirs(), ids=lambda p: p.name)
def test_a_service_never_imports_another(service: Path) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(services_imported(path) - {service.name})
        for path in service.rglob("*.py")
        if services_imported(path) - {service.name}
    }
    assert offenders == {}, f"{service.name} imports other services: {offenders}"


def test_the_shared_library_never_imports_a_service() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(services_imported(path))
        for path in (ROOT / "libs").rglob("*.py")
        if services_imported(path)
    }
    assert offenders == {}


@pytest.mark.parametrize("service", service_dirs(), ids=lambda p: p.name)
def test_a_service_has_a_main_and_a_readme(service: Path) -> None:
    assert service.name in SERVICE_NAMES, f"unknown service folder {service.name}"
    assert (service / "__main__.py").is_file()
    assert (service / "README.md").is_file()


METADATA_KEYS = {"mlbus.encoding", "mlbus.classes", "mlbus.feature_names."}


def metadata_keys_spelled(path: Path) -> set[str]:
    """ONNX metadata keys written as string literals (an f-string's literal parts too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in METADATA_KEYS
    }


def test_the_onnx_metadata_keys_have_one_home() -> None:
    """The trainer writes them and inference, drift and evaluation read them through
    mlbus.model_metadata; nobody else spells them."""
    home = ROOT / "libs" / "mlbus" / "model_metadata.py"
    assert metadata_keys_spelled(home) == METADATA_KEYS  # the checker sees them
    offenders = {
        str(path.relative_to(ROOT)): sorted(found)
        for folder in (ROOT / "libs", SERVICES)
        for path in folder.rglob("*.py")
        if path != home and (found := metadata_keys_spelled(path))
    }
    assert offenders == {}, f"ONNX metadata keys spelled outside model_metadata: {offenders}"


def assigned_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }


def test_what_a_redis_outage_raises_has_one_home() -> None:
    """Four services once caught four different sets; they share mlbus.redis_failures."""
    home = ROOT / "libs" / "mlbus" / "redis_failures.py"
    assert "REDIS_DOWN" in assigned_names(home)  # the checker sees the definition
    offenders = [
        str(path.relative_to(ROOT))
        for folder in (ROOT / "libs", SERVICES)
        for path in folder.rglob("*.py")
        if path != home and "REDIS_DOWN" in assigned_names(path)
    ]
    assert offenders == [], f"REDIS_DOWN defined outside mlbus.redis_failures: {offenders}"


SHELL = ("mlbus.cli", "mlbus.demo", "mlbus.soak")


@pytest.mark.parametrize("service", service_dirs(), ids=lambda p: p.name)
def test_a_service_never_imports_the_shell(service: Path) -> None:
    """The CLI, the demo and the soak are the shell around the services (STYLE.md)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.startswith(SHELL)
        )
        for path in service.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
