"""Python dependencies of the real engine, installed only with the user's consent.

Nothing is installed at import. torch goes first and through PyTorchUtils when that extension is
present, so the CUDA build matches the driver and no dependency pulls a CPU-only torch. Specs use
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
REQUIREMENTS = (
    TORCH,
    Requirement("timm", "timm>=1.0,<2"),
    Requirement("safetensors", "safetensors>=0.4,<1"),
    Requirement("scipy", "scipy>=1.10,<2"),
    Requirement("skimage", "scikit-image>=0.22,<1"),
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
    if any(r.module == TORCH.module for r in missing):
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
    install_torch: Callable[[str], None] | None = None,
    log: Callable[[str], None] = print,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> None:
    """Install ``missing`` (torch first) and check that each became importable."""
    ordered = sorted(missing, key=lambda r: r.module != TORCH.module)
    for requirement in ordered:
        log(f"MVGSlicer: installing {requirement.spec}")
        if requirement.module == TORCH.module and install_torch is not None:
            install_torch(requirement.spec)
        else:
            pip_install(requirement.spec)
    importlib.invalidate_caches()
    still = missing_requirements(ordered, find_spec)
    if still:
        raise RuntimeError(
            "installation finished but these packages still cannot be imported: "
            + ", ".join(r.spec for r in still)
            + ". See the Python console log; restarting Slicer may be needed."
        )
    log("MVGSlicer: all dependencies are installed")
