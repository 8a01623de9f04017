"""MVGCore: the Medical Vision Generalist as a PyTorch library (no Slicer, no Qt, no VTK)."""

from MVGCore.types import Cancelled, CancelToken, Geometry, Prompt, Volume

__all__ = ["CancelToken", "Cancelled", "Geometry", "Prompt", "Volume"]
__version__ = "0.1.0"
