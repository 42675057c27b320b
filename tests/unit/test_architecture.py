"""The layout promises of STYLE.md and ADR 0026, checked on the source tree.

Three source roots, all imported as `mlbus.*` (setup.py): `libs/mlbus` (what
services share), `services/<name>` and `app/mlbus/<name>` (the shell: the CLI,
`mlbus up`'s runtime, the demo, the example generator, the soak).

- a service never imports another service (they talk only through Kafka);
- the shared library never imports a service, nor the shell;
- a service never imports the shell; the shell never imports a service (it
  starts them as processes and talks to them through libs' clients);
- no two roots hold a package of the same name;
- every service folder is a package with `__main__.py` and a README.

Every import counts: lazy ones inside functions, `TYPE_CHECKING` ones, and
relative ones (resolved against the file's own module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBS = ROOT / "libs" / "mlbus"
SERVICES = ROOT / "services"
SHELL = ROOT / "app" / "mlbus"
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


SHELL_NAMES = {"cli", "demo", "runtime", "example", "soak"}


def module_of(path: Path) -> str:
    """The dotted name a source file is imported as (setup.py's mapping of the roots)."""
    for root, base in ((LIBS, "mlbus"), (SERVICES, "mlbus"), (SHELL, "mlbus")):
        if path.is_relative_to(root):
            parts = [base, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is in no source root")


def imported_modules(path: Path, module: str | None = None) -> set[str]:
    """Every module `path` imports, relative imports resolved against `module`
    (the file's own dotted name; `module_of(path)` when not given)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                own = module if module is not None else module_of(path)
                package = own if path.name == "__init__.py" else own.rpartition(".")[0]
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def mlbus_packages_imported(path: Path, names: set[str], module: str | None = None) -> set[str]:
    """Which of the `mlbus.<name>` packages in `names` the file imports."""
    return {
        parts[1]
        for imported in imported_modules(path, module)
        if (parts := imported.split("."))[0] == "mlbus" and len(parts) > 1 and parts[1] in names
    }


def services_imported(path: Path, module: str | None = None) -> set[str]:
    return mlbus_packages_imported(path, SERVICE_NAMES, module)


def shell_imported(path: Path, module: str | None = None) -> set[str]:
    return mlbus_packages_imported(path, SHELL_NAMES, module)


def service_dirs() -> list[Path]:
    return sorted(p for p in SERVICES.iterdir() if (p / "__init__.py").is_file())


def test_the_checker_sees_service_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from mlbus.registry import store\nimport mlbus.inference._server\n")
    assert services_imported(sample, "mlbus.sample") == {"registry", "inference"}


def test_the_checker_sees_shell_imports_lazy_and_relative(tmp_path: Path) -> None:
    sample = tmp_path / "_online.py"  # as if it were libs/mlbus/featurestore/_online.py
    sample.write_text(
        "from .. import cli\n"
        "from ..runtime._process import spawn\n"
        "from ._windows import Window\n"  # mlbus.featurestore._windows: not the shell
        "def later() -> None:\n"
        "    import mlbus.demo\n"
        "    from mlbus import example\n"
    )
    found = shell_imported(sample, "mlbus.featurestore._online")
    assert found == {"cli", "runtime", "demo", "example"}


def test_the_roots_hold_the_packages_they_should() -> None:
    """Each root's packages are what this test checks by name, and no name is in two roots
    (setup.py maps each to `mlbus.<name>`: two would shadow each other)."""

    def packages(root: Path) -> set[str]:
        return {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}

    assert packages(SHELL) == SHELL_NAMES
    assert packages(SERVICES) == SERVICE_NAMES
    assert packages(LIBS) & (SHELL_NAMES | SERVICE_NAMES) == set()
    assert {p.stem for p in LIBS.glob("*.py")} & (SHELL_NAMES | SERVICE_NAMES) == set()


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
        for path in LIBS.rglob("*.py")
        if services_imported(path)
    }
    assert offenders == {}


def test_the_shared_library_never_imports_the_shell() -> None:
    """libs/ is what services share and nothing more (ADR 0026): what a service needs
    of `mlbus up` (the run state, `discover`) lives in libs, not in the shell."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(shell_imported(path))
        for path in LIBS.rglob("*.py")
        if shell_imported(path)
    }
    assert offenders == {}, f"libs/ imports the shell: {offenders}"


def test_the_shell_never_imports_a_service() -> None:
    """The shell starts services as processes and talks to them through libs' clients
    and contracts (mypy could not follow such an import either: services/ is not on
    its path)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(services_imported(path))
        for path in SHELL.rglob("*.py")
        if services_imported(path)
    }
    assert offenders == {}, f"the shell imports services: {offenders}"


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
        for folder in (ROOT / "libs", SERVICES, SHELL)
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
        for folder in (ROOT / "libs", SERVICES, SHELL)
        for path in folder.rglob("*.py")
        if path != home and "REDIS_DOWN" in assigned_names(path)
    ]
    assert offenders == [], f"REDIS_DOWN defined outside mlbus.redis_failures: {offenders}"


@pytest.mark.parametrize("service", service_dirs(), ids=lambda p: p.name)
def test_a_service_never_imports_the_shell(service: Path) -> None:
    """The CLI, `mlbus up`'s runtime, the demo, the example generator and the soak are
    the shell around the services (STYLE.md, ADR 0026)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(shell_imported(path))
        for path in service.rglob("*.py")
        if shell_imported(path)
    }
    assert offenders == {}, f"{service.name} imports the shell: {offenders}"
