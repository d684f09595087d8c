"""Installing the backend's Python packages inside Slicer: once, on the first Segment.

Slicer already ships numpy, SimpleITK, scipy and pydicom; they are never replaced. What
the backend adds:

* **torch**, through the PyTorch extension's ``PyTorchUtils`` logic (it picks the CUDA
  build that matches the NVIDIA driver, else the CPU build);
* **safetensors** and **tqdm** (and pydicom, when missing) through
  ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install``.

Nothing here runs at import time, in the widget's ``setup()``, or without the user's
consent: :func:`ensureDependencies` asks once (one dialog naming everything missing),
then installs. Checking what is missing (:func:`missingDependencies`) imports nothing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from typing import Optional

log = logging.getLogger("breasttumorseg")

#: torch version the backend needs (PEP 440 specifier, passed to PyTorchUtils).
TORCH_REQUIREMENT = ">=2.1"
#: Other packages of the backend: (import name, pip requirement). Slicer ships numpy,
#: SimpleITK, scipy and (usually) pydicom; those are never installed or upgraded here.
PIP_REQUIREMENTS = (
    ("safetensors", "safetensors>=0.4"),
    ("tqdm", "tqdm>=4.60"),
    ("pydicom", "pydicom>=2.4"),
)
#: Packages that belong to Slicer itself: pinned to their installed versions while installing.
SLICER_OWN_PACKAGES = ("numpy", "SimpleITK", "scipy")
#: What nnU-Net v2 model folders need (nnU-Net's network builder), installed on their first use.
NNUNET_REQUIREMENTS = (("nnunetv2", "nnunetv2==2.8.1"),)
#: Kept as installed while nnU-Net is installed: Slicer's packages and the PyTorch extension's torch.
NNUNET_KEEPS = (*SLICER_OWN_PACKAGES, "torch", "torchvision")


class DependencyError(RuntimeError):
    """The backend's packages are missing and were not installed (one line saying why)."""


# ----------------------------------------------------------------------------- what is missing
def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken half-installed package
        return False


def _satisfies(distribution: str, requirement: str) -> bool:
    """Whether the installed ``distribution`` meets the requirement's minimum version."""
    try:
        installed = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    minimum = requirement.split(">=", 1)[1] if ">=" in requirement else None
    if minimum is None:
        return True
    return _versionTuple(installed) >= _versionTuple(minimum)


def _versionTuple(version: str) -> tuple:
    parts = []
    for piece in version.split("+", 1)[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def torchMissing() -> bool:
    """True when torch cannot be imported or is older than :data:`TORCH_REQUIREMENT`."""
    return not (_importable("torch") and _satisfies("torch", "torch" + TORCH_REQUIREMENT))


def missingPipRequirements() -> list:
    """Pip requirements of :data:`PIP_REQUIREMENTS` that are not satisfied (nothing is imported)."""
    return [requirement for name, requirement in PIP_REQUIREMENTS
            if not (_importable(name) and _satisfies(requirement.split(">=")[0], requirement))]


def missingDependencies() -> list:
    """Everything the backend still needs, as requirement strings ("torch>=2.1", ...)."""
    missing = ["torch" + TORCH_REQUIREMENT] if torchMissing() else []
    return missing + missingPipRequirements()


def missingNnUNet() -> list:
    """Requirements of :data:`NNUNET_REQUIREMENTS` not installed (nothing is imported)."""
    return [requirement for name, requirement in NNUNET_REQUIREMENTS if not _importable(name)]


# ----------------------------------------------------------------------------- installing
def ensureNnUNet(askConfirmation: bool = True) -> bool:
    """Install nnU-Net v2 (for running nnU-Net model folders) after one confirmation dialog,
    keeping Slicer's numpy, SimpleITK, scipy and the PyTorch extension's torch as they are.

    Returns True when it is available (then or already), False when the user declined;
    raises :class:`DependencyError` (one line) when the installation failed. Call it after
    :func:`ensureDependencies` (torch first). Desktop Slicer only.
    """
    import slicer

    missing = missingNnUNet()
    if not missing:
        return True
    if askConfirmation:
        text = ("Running an nnU-Net model folder needs this Python package, which is not installed yet:\n\n"
                + "\n".join(f"  - {requirement}" for requirement in missing)
                + "\n\nIt will be downloaded and installed into Slicer's Python now. Slicer's numpy, SimpleITK "
                  "and the PyTorch extension's torch are kept as they are.")
        if not slicer.util.confirmOkCancelDisplay(text, "BreastTumorSeg - install nnU-Net"):
            log.info("BreastTumorSeg: installation of nnU-Net declined by the user")
            return False
    _pipInstall(missing, keep=NNUNET_KEEPS)
    still = missingNnUNet()
    if still:
        raise DependencyError(f"installing nnU-Net did not succeed, still missing: {', '.join(still)} "
                              f"(see the Python console / application log)")
    return True


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Install what the backend is missing, after one confirmation dialog.

    Returns True when everything is available (then or already), False when the user
    declined. Raises :class:`DependencyError` with one line when installation is not
    possible (no PyTorch extension) or failed. Desktop Slicer only.
    """
    import slicer

    missing = missingDependencies()
    if not missing:
        return True
    needTorch = torchMissing()
    if needTorch:
        try:
            import PyTorchUtils  # noqa: F401  (the PyTorch extension's module)
        except ImportError:
            raise DependencyError("BreastTumorSeg needs the PyTorch extension: install 'PyTorch' from the "
                                  "Extensions Manager, restart Slicer, then press Segment again") from None
    if askConfirmation:
        text = ("BreastTumorSeg needs these Python packages, which are not installed yet:\n\n"
                + "\n".join(f"  - {requirement}" for requirement in missing)
                + "\n\nThey will be downloaded and installed into Slicer's Python now "
                  "(PyTorch through the PyTorch extension; this can take several minutes). "
                  "Slicer's own numpy and SimpleITK are not changed.")
        if not slicer.util.confirmOkCancelDisplay(text, "BreastTumorSeg - install Python packages"):
            log.info("BreastTumorSeg: installation of Python packages declined by the user")
            return False
    if needTorch:
        _installTorch()
    pipMissing = missingPipRequirements()
    if pipMissing:
        _pipInstall(pipMissing)
    still = missingDependencies()
    if still:
        raise DependencyError(f"installing Python packages did not succeed, still missing: {', '.join(still)} "
                              f"(see the Python console / application log)")
    return True


def _installTorch() -> None:
    import PyTorchUtils

    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    # our own dialog already asked for everything: one confirmation in all
    torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise DependencyError("PyTorch was not installed (see the PyTorch extension's messages in the log)")


def _pipInstall(requirements: list, keep=SLICER_OWN_PACKAGES) -> None:
    import slicer

    try:
        import slicer.packaging as packaging  # Slicer >= 5.12
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        constraints = _constraintsFile(keep)
        try:
            packaging.pip_ensure(list(requirements), constraints=constraints, prompt_install=False,
                                 requester="BreastTumorSeg")
        finally:
            if constraints:
                _removeQuietly(constraints)
        return
    # Slicer < 5.12: pip_install of packages that do not depend on numpy or SimpleITK
    slicer.util.pip_install(" ".join(requirements))


def _constraintsFile(keep=SLICER_OWN_PACKAGES) -> str | None:
    """A pip constraints file pinning the installed versions of ``keep`` (Slicer's own numpy,
    SimpleITK and scipy by default) so that pip never replaces them."""
    import tempfile

    pins = []
    for distribution in keep:
        try:
            pins.append(f"{distribution}=={importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if not pins:
        return None
    handle, path = tempfile.mkstemp(prefix="BreastTumorSeg-constraints-", suffix=".txt", text=True)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write("\n".join(pins) + "\n")
    return path


def _removeQuietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ----------------------------------------------------------------------------- the GPU's name
def gpuName() -> Optional[str]:
    """The first NVIDIA GPU's name, or None; for the device selector.

    Uses torch when it is already imported (no import cost), else ``nvidia-smi`` (2 s at
    most). Never imports torch: the panel must open before torch is installed.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return str(torch.cuda.get_device_name(0))
        except Exception:  # noqa: BLE001 - a broken CUDA setup just means "no GPU"
            return None
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        completed = subprocess.run([executable, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=2.0, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in completed.stdout.splitlines() if line.strip()]
    return names[0] if completed.returncode == 0 and names else None
