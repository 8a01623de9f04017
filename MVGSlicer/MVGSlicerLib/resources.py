"""Where the repository-level resources (model registry, sample data) are found at run time.

They live in the repository's top-level Resources/ folder and are copied into the module's own
Resources/ folder when the extension is built, so both layouts must work.
"""

from __future__ import annotations

from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent.parent


def shared_resource(*parts: str) -> Path:
    """The packaged copy under the module, else the source checkout's file (which may not exist)."""
    packaged = MODULE_DIR.joinpath("Resources", *parts)
    return packaged if packaged.exists() else MODULE_DIR.parent.joinpath("Resources", *parts)
