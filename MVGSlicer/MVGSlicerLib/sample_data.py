"""The bundled sample: a lung CT crop and its tumour label, offered in Slicer's Sample Data module.

The label loads as a segmentation, so its painted slices (PROMPT_SLICES) serve as prompts; the
self-test runs the bundled model on the same pair. Slicer's SampleDataLogic is passed in.
"""

from __future__ import annotations

from typing import Any

from .resources import MODULE_DIR, shared_resource

CATEGORY = "MVG Slicer"
FILES = ("MVGSampleLungCT.nrrd", "MVGSampleLungCT_label.nrrd")
NODE_NAMES = ("MVGSampleLungCT", "MVGSampleLungCT tumour")
PROMPT_SLICES = (8, 12)


def register(sample_data_logic: Any, title: str) -> None:
    """Register the sample with only the arguments every supported Slicer accepts.

    ``loadFileType`` (a list is fine) works from 5.6 to 5.12, ``loadFileTypes`` does not exist
    before 5.10, and categories with a title of their own only exist from 5.12 (before, the
    category name is the title).
    """
    if hasattr(sample_data_logic, "registerCustomSampleDataCategory"):
        sample_data_logic.registerCustomSampleDataCategory(CATEGORY, title=title)
    folder = shared_resource("SampleData")
    sample_data_logic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=NODE_NAMES[0],
        thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "MVGSlicer.png"),
        uris=[(folder / name).as_uri() for name in FILES],
        fileNames=list(FILES),
        nodeNames=list(NODE_NAMES),
        loadFileType=["VolumeFile", "SegmentationFile"],
    )
