"""The package's data folder, found with importlib.resources so that it works wherever the package is installed."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_dir() -> Path:
    # Installed wheels and editable installs are plain folders on disk, which is what the mapping loader, the
    # FHIR package reader and the settings' path checks need; a zipped install is not supported.
    folder = files("casebridge").joinpath("data")
    if not isinstance(folder, Path):
        raise RuntimeError(f"casebridge's data files must be on disk, not in {folder!r}")
    return folder
