"""Model bundles in TF Serving's layout: `<models root>/<name>/<version>/`.

A version folder holds one SavedModel (`saved_model.pb`, `variables/`) whose `serving_default`
signature maps named input tensors to named outputs, and a `metadata.json` next to it (labels,
input spec, output spec, training data fingerprint, validation metrics, creation time).
Training writes bundles with `write_bundle`; the serving kit's model repository reads them.
A version is written under a temporary name and renamed into place, so a server polling the
folder never sees half a bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

METADATA_FILE = "metadata.json"
#: The SavedModel signature every bundle serves (and its ONNX twin computes).
SERVING_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class Label:
    code: int
    name: str


@dataclass(frozen=True)
class BundleInfo:
    """A bundle version on disk and its parsed metadata."""

    name: str
    version: int
    path: Path
    metadata: dict[str, Any]

    @property
    def labels(self) -> list[Label]:
        return [Label(int(item["code"]), str(item["name"])) for item in self.metadata["labels"]]


def versions(models_root: str | os.PathLike, name: str) -> list[int]:
    """Complete versions of a model, ascending (folders named by an integer with a metadata file)."""
    model_dir = Path(models_root) / name
    if not model_dir.is_dir():
        return []
    found = []
    for child in model_dir.iterdir():
        if child.name.isdigit() and (child / METADATA_FILE).is_file():
            found.append(int(child.name))
    return sorted(found)


def read_bundle(models_root: str | os.PathLike, name: str, version: int | None = None) -> BundleInfo:
    """The given version, or the highest one; FileNotFoundError when there is none."""
    if version is None:
        available = versions(models_root, name)
        if not available:
            raise FileNotFoundError(f"no version of model {name!r} under {Path(models_root) / name}")
        version = available[-1]
    path = Path(models_root) / name / str(version)
    metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    return BundleInfo(name=name, version=version, path=path, metadata=metadata)


def write_bundle(
    models_root: str | os.PathLike,
    name: str,
    export: Callable[[Path], None],
    metadata: dict[str, Any],
    version: int | None = None,
) -> BundleInfo:
    """Write a new version: `export(folder)` fills the folder, metadata.json is added, then renamed.

    Without `version`, the next integer after the highest existing one is used.
    """
    model_dir = Path(models_root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        existing = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; bundles are immutable, pick a new version")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by other users (containers)
    try:
        export(staging)
        full = {
            "name": name,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **metadata,
        }
        (staging / METADATA_FILE).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_bundle(models_root, name, version)


def bundle_size_bytes(path: Path) -> int:
    """On-disk weight of a bundle folder, reported in docs and training logs."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
