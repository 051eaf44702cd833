"""Extension packaging: CMake lists against the files on disk, the Extensions Index entry, the icon.

Nothing here needs the Slicer SDK: the CMake files are parsed as text. A Python file that is missing
from ACTIONPlusPlus/CMakeLists.txt would be silently left out of the installed extension, so the lists
are compared with the files on disk in both directions.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "ACTIONPlusPlus"
LIB_DIR = REPO / "ACTIONPlusPlusLib"
SCHEMA = REPO.parent / "shared" / "spec" / "schemas" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
REPOSITORY_URL = "https://github.com/ACTIONPlusPlus/SlicerACTIONPlusPlus"
RAW_URL = "https://raw.githubusercontent.com/ACTIONPlusPlus/SlicerACTIONPlusPlus/main/"

# files under the module folder that are for developers only and are not installed
DEV_ONLY = {
    "Resources/Icons/make_icon.py",  # draws the icon
}
DEV_ONLY_DIRS = ("Resources/Screenshots/",)  # served from the repository (EXTENSION_SCREENSHOTURLS)


def _strip_comments(text: str) -> str:
    """Drop CMake line comments (a ``#`` outside double quotes, to the end of the line)."""
    out = []
    for line in text.splitlines():
        quoted = False
        for index, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                line = line[:index]
                break
        out.append(line)
    return "\n".join(out)


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """``set(NAME item item ...)`` blocks of a CMake file, with ${MODULE_NAME}/${LIB_NAME} substituted."""
    text = _strip_comments(path.read_text())
    values: dict[str, list[str]] = {}
    for match in re.finditer(r"\bset\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*(.*?)\)", text, re.S):
        name, body = match.group(1), match.group(2)
        items = re.findall(r'"[^"]*"|\S+', body)
        values[name] = [item.strip('"') for item in items]
    for name, items in values.items():
        resolved = []
        for item in items:
            for key in ("MODULE_NAME", "LIB_NAME"):
                if key in values and len(values[key]) == 1:
                    item = item.replace("${%s}" % key, values[key][0])
            resolved.append(item)
        values[name] = resolved
    return values


@pytest.fixture(scope="module")
def module_sets() -> dict[str, list[str]]:
    return cmake_sets(MODULE_DIR / "CMakeLists.txt")


@pytest.fixture(scope="module")
def top_sets() -> dict[str, list[str]]:
    return cmake_sets(REPO / "CMakeLists.txt")


def _paste_hint(variable: str, missing: list[str]) -> str:
    lines = "\n".join(f"  {m}" for m in missing)
    return f"add these lines to {variable} in ACTIONPlusPlus/CMakeLists.txt (not installed otherwise):\n{lines}"


def lib_python_files() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def lib_other_files() -> list[str]:
    return sorted(
        p.relative_to(REPO).as_posix()
        for p in LIB_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc") and p.name != ".DS_Store"
    )


def _cmake_lib(items: list[str]) -> list[str]:
    return [i.replace("${LIB_NAME}", "ACTIONPlusPlusLib") for i in items]


# ------------------------------------------------------------------------------------------- module CMake


def test_every_lib_python_file_is_listed(module_sets):
    listed = set(_cmake_lib(module_sets["LIB_PYTHON_SCRIPTS"]))
    missing = [f for f in lib_python_files() if f not in listed]
    assert not missing, _paste_hint("LIB_PYTHON_SCRIPTS", ["${LIB_NAME}" + m[len("ACTIONPlusPlusLib"):] for m in missing])


def test_every_lib_resource_is_listed(module_sets):
    listed = set(_cmake_lib(module_sets.get("LIB_PYTHON_RESOURCES", [])))
    missing = [f for f in lib_other_files() if f not in listed]
    assert not missing, _paste_hint("LIB_PYTHON_RESOURCES", ["${LIB_NAME}" + m[len("ACTIONPlusPlusLib"):] for m in missing])


def test_every_module_python_file_is_listed(module_sets):
    listed = set(module_sets["MODULE_PYTHON_SCRIPTS"]) | set(module_sets["MODULE_PYTHON_RESOURCES"])
    listed |= set(module_sets.get("MODULE_BATCH_SCRIPTS", []))
    on_disk = sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                     if "__pycache__" not in p.parts and p.relative_to(MODULE_DIR).as_posix() not in DEV_ONLY)
    assert "ACTIONPlusPlusPanel/run_watch.py" in on_disk and "Testing/Python/ACTIONPlusPlusTest.py" in on_disk
    missing = [f for f in on_disk if f not in listed]
    assert not missing, _paste_hint("MODULE_PYTHON_SCRIPTS", missing)
    assert "ACTIONPlusPlus.py" in module_sets["MODULE_PYTHON_SCRIPTS"]


def test_the_batch_script_is_kept_out_of_the_module_scan(module_sets):
    """Slicer loads every .py at the top of qt-scripted-modules as a module: the batch script (no
    widget, not a module) is installed in a sub-folder instead (issue 34), and finds the Lib one level up."""
    assert "ACTIONPlusPlusBatch.py" not in module_sets["MODULE_PYTHON_SCRIPTS"]
    assert module_sets["MODULE_BATCH_SCRIPTS"] == ["ACTIONPlusPlusBatch.py"]
    text = " ".join(_strip_comments((MODULE_DIR / "CMakeLists.txt").read_text()).split())
    call = re.search(r"ctkMacroCompilePythonScript\( TARGET_NAME \$\{MODULE_NAME\}Batch (.*?)\)", text)
    assert call, "the batch script needs its own ctkMacroCompilePythonScript"
    for keyword in ('SCRIPTS "${MODULE_BATCH_SCRIPTS}"', "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}",
                    "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${MODULE_NAME}Scripts",
                    "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${MODULE_NAME}Scripts"):
        assert keyword in call.group(1), keyword
    batch = (MODULE_DIR / "ACTIONPlusPlusBatch.py").read_text()
    assert "here.parent" in batch  # installed: .../qt-scripted-modules/ACTIONPlusPlusScripts -> the Lib beside it


def test_every_module_resource_is_listed(module_sets):
    listed = set(module_sets["MODULE_PYTHON_RESOURCES"])
    on_disk = sorted(
        p.relative_to(MODULE_DIR).as_posix()
        for p in (MODULE_DIR / "Resources").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    missing = [
        f for f in on_disk if f not in listed and f not in DEV_ONLY and not f.startswith(DEV_ONLY_DIRS)
    ]
    assert not missing, _paste_hint("MODULE_PYTHON_RESOURCES", missing)
    for required in ("Resources/Icons/ACTIONPlusPlus.png", "Resources/UI/ACTIONPlusPlus.ui"):
        assert required in listed


def test_every_listed_file_exists_once(module_sets):
    groups = {
        "MODULE_PYTHON_SCRIPTS": (MODULE_DIR, module_sets["MODULE_PYTHON_SCRIPTS"]),
        "MODULE_PYTHON_RESOURCES": (MODULE_DIR, module_sets["MODULE_PYTHON_RESOURCES"]),
        "LIB_PYTHON_SCRIPTS": (REPO, _cmake_lib(module_sets["LIB_PYTHON_SCRIPTS"])),
        "LIB_PYTHON_RESOURCES": (REPO, _cmake_lib(module_sets.get("LIB_PYTHON_RESOURCES", []))),
    }
    for variable, (root, items) in groups.items():
        assert len(items) == len(set(items)), f"{variable} lists a file twice"
        gone = [i for i in items if not (root / i).is_file()]
        assert not gone, f"{variable} lists files that do not exist: {gone}"
        assert all(not Path(i).is_absolute() and ".." not in Path(i).parts for i in items), variable


def test_lib_list_is_sorted_one_per_line():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    block = re.search(r"set\(LIB_PYTHON_SCRIPTS\n(.*?)\n\s*\)", text, re.S)
    assert block, "LIB_PYTHON_SCRIPTS must be a block with one file per line"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert all(" " not in line for line in lines)
    assert lines == sorted(lines), "keep LIB_PYTHON_SCRIPTS sorted (easier to merge)"


def test_module_cmake_macros():
    text = _strip_comments((MODULE_DIR / "CMakeLists.txt").read_text())
    build = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert build, "slicerMacroBuildScriptedModule call missing"
    for keyword in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}", "WITH_GENERIC_TESTS"):
        assert keyword in " ".join(build.group(1).split()), keyword
    lib = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", text, re.S)
    assert lib, "the Lib needs its own ctkMacroCompilePythonScript (it lives outside the module folder)"
    body = " ".join(lib.group(1).split())
    for keyword in (
        'SCRIPTS "${LIB_PYTHON_SCRIPTS}"',
        "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/..",
        "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}",
        "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}",
        "NO_INSTALL_SUBDIR",
    ):
        assert keyword in body, keyword
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    assert testing and "add_subdirectory(Testing)" in testing.group(1)
    # Slicer's layout: Testing/CMakeLists.txt -> Testing/Python/CMakeLists.txt registers the self-test
    assert "add_subdirectory(Python)" in _strip_comments((MODULE_DIR / "Testing" / "CMakeLists.txt").read_text())
    python = _strip_comments((MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text())
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}Test.py)" in python
    assert (MODULE_DIR / "Testing" / "Python" / "ACTIONPlusPlusTest.py").is_file()


# ------------------------------------------------------------------------------------- top-level CMake


def test_top_level_cmake(top_sets):
    text = _strip_comments((REPO / "CMakeLists.txt").read_text())
    assert re.search(r"project\(ACTIONPlusPlus\)", text)
    for variable in (
        "EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS",
    ):
        assert top_sets.get(variable), f"{variable} is not set"
    assert top_sets["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert top_sets["EXTENSION_DEPENDS"] == ["PyTorch"]
    order = [
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(ACTIONPlusPlus)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ]
    positions = [text.find(item) for item in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions))
    assert positions == sorted(positions), "find_package, include, add_subdirectory, config, cpack: in this order"
    assert text.find("EXTENSION_DEPENDS") < positions[0], "EXTENSION_* variables go before find_package(Slicer)"


def test_urls_point_at_files_of_this_repository(top_sets):
    homepage = top_sets["EXTENSION_HOMEPAGE"][0]
    assert homepage.startswith(REPOSITORY_URL)
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in top_sets[variable]:
            assert url.startswith(RAW_URL), url
            local = REPO / url[len(RAW_URL):]
            assert local.is_file(), f"{variable} points at {url} but {local} does not exist"
    screenshot = REPO / top_sets["EXTENSION_SCREENSHOTURLS"][0][len(RAW_URL):]
    assert screenshot.stat().st_size < 200_000


def test_icon_is_a_128_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "ACTIONPlusPlus.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_license_present():
    assert (REPO / "LICENSE").is_file()


# ----------------------------------------------------------------------------- Extensions Index entry


def test_index_entry_validates_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA} (../shared is absent)")
    schema = json.loads(SCHEMA.read_text())
    entry = json.loads((REPO / "ACTIONPlusPlus.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    jsonschema.validate(entry, schema)
    assert "slicer-extension-catalog-entry-schema-v1.0.2.json" in entry["$schema"]


def test_index_entry_matches_cmake(top_sets):
    entry = json.loads((REPO / "ACTIONPlusPlus.json").read_text())
    depends = [d for d in top_sets["EXTENSION_DEPENDS"] if d != "NA"]
    assert entry["build_dependencies"] == depends
    assert entry["category"] == top_sets["EXTENSION_CATEGORY"][0]
    assert entry["scm_url"].removesuffix(".git") == REPOSITORY_URL
    assert entry.get("scm_type", "git") == "git" and entry["scm_revision"]
    assert 1 <= entry.get("tier", 1) <= 5
