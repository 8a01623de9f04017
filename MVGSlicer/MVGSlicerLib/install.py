"""Python dependencies of the real engine, installed only with the user's consent.

Nothing is installed at import. torch and torchvision go first, together and through PyTorchUtils
when that extension is present, so the CUDA build matches the driver; timm requires torchvision,
and letting pip fetch that for timm would pull a torch build of pip's choosing. Specs use
lower bounds and major ceilings, never exact pins, so they coexist with other extensions. The
installer functions are passed in: Slicer's ``slicer.util.pip_install`` runs pip on the main
thread with its output in the Python console, which is where the logs are visible.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    module: str  # the import name checked
    spec: str  # what pip (or PyTorchUtils) is asked for


TORCH = Requirement("torch", "torch>=2.4,<3")
TORCHVISION = Requirement("torchvision", "torchvision>=0.19,<1")
REQUIREMENTS = (
    TORCH,
    TORCHVISION,
    Requirement("timm", "timm>=1.0,<2"),
    Requirement("safetensors", "safetensors>=0.4,<1"),
    Requirement("scipy", "scipy>=1.10,<2"),
    Requirement("skimage", "scikit-image>=0.22,<1"),
    # skimage's estimate_sigma (Denoise without prompts) imports it, but scikit-image does not require it
    Requirement("pywt", "PyWavelets>=1.4,<2"),
    Requirement("yaml", "pyyaml>=6,<7"),
)


def missing_requirements(
    requirements: Sequence[Requirement] = REQUIREMENTS,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> list[Requirement]:
    """The requirements whose module cannot be found; nothing is imported."""
    return [r for r in requirements if find_spec(r.module) is None]


def consent_message(missing: Sequence[Requirement], torch_via_pytorchutils: bool) -> str:
    lines = ["MVGSlicer needs these Python packages, which are not installed yet:", ""]
    lines += [f"  {r.spec}" for r in missing]
    if _needs_torch(missing):
        how = (
            "the PyTorch Utils extension, which picks the build for your GPU driver"
            if torch_via_pytorchutils
            else "pip"
        )
        lines += ["", f"PyTorch will be installed through {how}."]
    lines += [
        "",
        "Download and install them now? This can take several minutes; the log is in the Python console.",
    ]
    return "\n".join(lines)


def install_missing(
    missing: Sequence[Requirement],
    pip_install: Callable[[str], None],
    install_torch: Callable[[str, str], None] | None = None,
    log: Callable[[str], None] = print,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> None:
    """Install ``missing``: torch + torchvision first (``install_torch(torch_spec, torchvision_spec)``
    or one pip call for the pair), then the rest with pip; check that each became importable."""
    if _needs_torch(missing):
        log(f"MVGSlicer: installing {TORCH.spec} and {TORCHVISION.spec}")
        if install_torch is not None:
            install_torch(TORCH.spec, TORCHVISION.spec)
        else:
            pip_install(f"{TORCH.spec} {TORCHVISION.spec}")
    for requirement in missing:
        if not _needs_torch([requirement]):
            log(f"MVGSlicer: installing {requirement.spec}")
            pip_install(requirement.spec)
    importlib.invalidate_caches()
    still = missing_requirements(missing, find_spec)
    if still:
        raise RuntimeError(
            "installation finished but these packages still cannot be imported: "
            + ", ".join(r.spec for r in still)
            + ". See the Python console log; restarting Slicer may be needed."
        )
    log("MVGSlicer: all dependencies are installed")


def _needs_torch(missing: Sequence[Requirement]) -> bool:
    return any(r in (TORCH, TORCHVISION) for r in missing)
