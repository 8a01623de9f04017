"""The extension's packaging files and the .ui agree with the code (checked without the Slicer app)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from MVGSlicerLib import resources, sample_data

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MVGSlicer"
UI = MODULE / "Resources" / "UI" / "MVGSlicer.ui"


def _parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class in MVGSlicer.py."""
    tree = ast.parse((MODULE / "MVGSlicer.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign)
            }
    raise AssertionError("no @parameterNodeWrapper class in MVGSlicer.py")


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _property(widget: ET.Element, name: str) -> ET.Element | None:
    return next((p for p in widget.findall("property") if p.get("name") == name), None)


def test_every_slicer_parameter_name_matches_a_field_of_a_compatible_type():
    fields = _parameter_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        prop = _property(widget, "SlicerParameterName")
        if prop is not None:
            bound[name] = (prop.findtext("string"), widget)
    assert len(bound) >= 6
    for widget_name, (field, widget) in bound.items():
        assert field in fields, f"{widget_name} binds unknown parameter {field!r}"
        annotation, widget_class = fields[field], widget.get("class")
        if annotation.startswith("vtkMRML"):
            node_types = [s.text for s in _property(widget, "nodeTypes").iter("string")]
            assert widget_class == "qMRMLNodeComboBox" and node_types == [annotation], widget_name
        elif "Choice(" in annotation:
            assert widget_class == "QComboBox", widget_name  # the parameter wrapper fills the items
        elif annotation == "bool":
            assert widget_class == "QCheckBox", widget_name
        else:
            assert (annotation, widget_class) == ("str", "QLineEdit"), widget_name


def _gui_sources() -> list[Path]:
    """The files that use the .ui: MVGSlicer.py and its Qt-side package."""
    return [MODULE / "MVGSlicer.py", *sorted((MODULE / "MVGSlicerWidgets").glob("*.py"))]


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = {name for path in _gui_sources() for name in re.findall(r"\bui\.(\w+)", path.read_text())}
    assert {"runButton", "segmentEditorWidget"} <= used
    used |= {f"add{view}Button" for view in ("Red", "Green", "Yellow")}  # reached through getattr
    missing = used - set(_ui_widgets())
    assert not missing, f"widgets used in the code but absent from the .ui: {sorted(missing)}"


def _cmake_listed(cmake: str) -> set[str]:
    return {
        token.replace("${MODULE_NAME}", "MVGSlicer")
        for token in re.findall(r"[\w${}/.]+\.(?:py|png|ui)\b", cmake)
    }


def test_module_cmake_lists_every_script_and_resource():
    listed = _cmake_listed((MODULE / "CMakeLists.txt").read_text())
    scripts = {"MVGSlicer.py", *(str(p.relative_to(MODULE)) for p in MODULE.glob("MVGSlicer*/*.py"))}
    resources = {
        str(p.relative_to(MODULE))
        for folder in ("Icons", "UI")
        for p in (MODULE / "Resources" / folder).iterdir()
    }
    assert scripts | resources == listed
    assert all((MODULE / path).is_file() for path in listed)
    assert "WITH_GENERIC_TESTS" in (MODULE / "CMakeLists.txt").read_text()
    testing = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    assert all(p.name in testing for p in (MODULE / "Testing" / "Python").glob("*.py"))


def test_the_module_folder_holds_no_python_file_but_the_module():
    """Slicer loads every .py directly in a scripted module folder as a module of that name (and
    reports an error when the file has no such class), so helpers live in packages next to it."""
    assert [p.name for p in MODULE.glob("*.py")] == ["MVGSlicer.py"]
    packages = [folder for folder in MODULE.glob("MVGSlicer*") if folder.is_dir()]
    assert len(packages) >= 2 and all((folder / "__init__.py").is_file() for folder in packages)


def test_extension_metadata_is_consistent():
    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(MVGSlicer\)", top, re.M)
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', top)
    assert "add_subdirectory(MVGSlicer)" in top
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', top), key
    catalog = json.loads((ROOT / "MVGSlicer.json").read_text())  # file name == project name
    assert {"$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"} <= set(catalog)
    assert catalog["build_dependencies"] == ["PyTorch"]
    s4ext = dict(
        line.split(" ", 1) if " " in line else (line, "")
        for line in (ROOT / "MVGSlicer.s4ext").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert s4ext["depends"] == "PyTorch" and s4ext["category"] == catalog["category"]
    assert s4ext["scmurl"] == catalog["scm_url"]
    assert re.search(r'EXTENSION_CATEGORY "([^"]+)"', top).group(1) == catalog["category"]
    assert (ROOT / "LICENSE").is_file()


@pytest.mark.parametrize("icon", ["MVGSlicer/Resources/Icons/MVGSlicer.png", "Resources/Icons/MVGSlicer.png"])
def test_icons_are_128_pixel_pngs(icon):
    data = (ROOT / icon).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_registered_sample_files_exist():
    names = sample_data.FILES
    assert names and all(resources.shared_resource("SampleData", name).is_file() for name in names)


def _metadata() -> dict[str, str]:
    """The extension description as CMake, the catalog entry and the legacy .s4ext give it."""
    top = (ROOT / "CMakeLists.txt").read_text()
    s4ext = dict(
        line.split(" ", 1) if " " in line else (line, "")
        for line in (ROOT / "MVGSlicer.s4ext").read_text().splitlines()
        if line and not line.startswith("#")
    )
    cmake = dict(re.findall(r'set\(EXTENSION_(\w+) "([^"]*)"\)', top))
    return {
        "homepage": cmake["HOMEPAGE"],
        "icon": cmake["ICONURL"],
        "screenshots": cmake["SCREENSHOTURLS"],
        "contributors": cmake["CONTRIBUTORS"],
        "scm_url": json.loads((ROOT / "MVGSlicer.json").read_text())["scm_url"],
        "s4ext_scm_url": s4ext["scmurl"],
        "s4ext_icon": s4ext["iconurl"],
        "s4ext_screenshots": s4ext["screenshoturls"],
        "s4ext_contributors": s4ext["contributors"],
    }


def test_metadata_follows_what_the_extensions_index_checks():
    meta = _metadata()
    repository = re.match(r"https://github\.com/[\w.-]+/([\w.-]+)\.git$", meta["scm_url"]).group(1)
    assert repository.startswith("Slicer"), repository  # the index's naming rule for repositories
    assert meta["s4ext_scm_url"] == meta["scm_url"] and meta["homepage"].startswith(meta["scm_url"][:-4])
    raw = f"https://raw.githubusercontent.com/{meta['scm_url'][19:-4]}/main/"
    for key in ("icon", "screenshots", "s4ext_icon", "s4ext_screenshots"):
        for url in meta[key].split():
            assert url.startswith(raw) and (ROOT / url[len(raw) :]).is_file(), url  # resolves once pushed
    assert meta["s4ext_icon"] == meta["icon"] and meta["s4ext_screenshots"] == meta["screenshots"]
    assert meta["icon"] not in meta["screenshots"]  # a screenshot, not the icon
    for contributors in (meta["contributors"], meta["s4ext_contributors"]):
        assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c.strip()) for c in contributors.split(","))
    module = (MODULE / "MVGSlicer.py").read_text()
    listed = re.search(r"self\.parent\.contributors = \[(.*)\]", module).group(1)
    assert ast.literal_eval(f"[{listed}]") == [c.strip() for c in meta["contributors"].split(",")]


def test_shared_files_are_copied_at_build_time_not_configure_time():
    cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "file(COPY" not in cmake  # configure-time copies go stale until CMake runs again
    assert re.search(r"add_custom_target\(\$\{MODULE_NAME\}SharedFiles ALL", cmake)
    assert "CopySharedFiles.cmake" in cmake


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake on PATH to run the copy script")
def test_the_build_time_copy_script_puts_mvgcore_and_resources_next_to_the_module(tmp_path):
    script = MODULE / "CopySharedFiles.cmake"
    destination = tmp_path / "qt-scripted-modules"
    subprocess.run(
        ["cmake", f"-DSOURCE_ROOT={ROOT}", f"-DDESTINATION={destination}", "-P", str(script)], check=True
    )
    assert (destination / "MVGCore" / "predict" / "__init__.py").is_file() and not list(
        destination.rglob("__pycache__")
    )
    for name in ("Models.json", "mvg_tiny_default.safetensors", "mvg_tiny_default.json"):
        assert (destination / "Resources" / "Models" / name).is_file(), name
    assert {p.name for p in (destination / "Resources" / "SampleData").iterdir()} >= {
        "MVGSampleLungCT.nrrd",
        "MVGSampleLungCT_label.nrrd",
    }
