"""Segment names, synonyms, colours and SNOMED CT codes of each preset's classes.

Shared by the scene bridge and the GUI; imports nothing from Slicer.  Codes follow
``shared/spec/SLICER.md``; the colours of LV, Myo and RV do not (issue 34): the spec's three browns
(Slicer's general-anatomy colours) cannot be told apart in a short-axis overlay, so LV is red, Myo
yellow and RV blue, the usual cardiac-MRI contouring colours.  LA keeps its colour.  A segment is matched to a class BY NAME (case-insensitive, with the
usual synonyms, ignoring ``_``/``-``/extra spaces) or, failing that, by the SNOMED code of its
terminology entry; never by its position in the segmentation.

Slicer serialises a segment's terminology (tag ``TerminologyEntry`` of ``vtkSegment``) as seven
``~``-separated fields, each code a ``scheme^value^meaning`` triple::

    context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier

(checked against ``vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry`` of slicer-core 5.11 in
``Testing/test_scene_terminology.py``).

Our entries point at our own terminology context, ``ACTIONPlusPlus/Resources/Terminology/
ACTIONPlusPlus.term.json`` (every preset segment with its SNOMED CT code, name and colour), which the
module loads at Slicer's start-up: Slicer's "General Anatomy" list has no left atrium or myocardium and
names the ventricles differently.  :func:`terminology_document` is that file's content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TERMINOLOGY_CONTEXT = "Segmentation category and type - ACTION++ cardiac structures"
TERMINOLOGY_FILE_NAME = "ACTIONPlusPlus.term.json"  # in ACTIONPlusPlus/Resources/Terminology/
SEGMENT_CONTEXT_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY = ("SCT", "123037004", "Anatomical Structure")


@dataclass(frozen=True)
class ClassInfo:
    """One foreground class of a preset."""

    value: int  # voxel value in label maps (matches Config.class_names index)
    name: str  # canonical short name, also the predicted segment's name (== Config.class_names[value])
    meaning: str  # SNOMED CT code meaning
    code: str  # SNOMED CT concept id
    rgb: tuple[int, int, int]  # 0..255
    synonyms: tuple[str, ...]  # lower-case alternatives accepted as segment names

    @property
    def color(self) -> tuple[float, float, float]:
        """The colour as 0..1 floats, as ``vtkSegment.SetColor`` expects."""
        return tuple(c / 255.0 for c in self.rgb)  # type: ignore[return-value]

    @property
    def terminology_entry(self) -> str:
        return terminology_entry(self.code, self.meaning)


_LA = ClassInfo(
    1, "LA", "Left atrium", "82471001", (221, 129, 37),
    ("la", "left atrium", "left atrial", "left atrium of heart", "left atrial cavity",
     "left atrium blood pool", "la blood pool", "la cavity"),
)
_RV = ClassInfo(
    1, "RV", "Right ventricle of heart", "53085002", (61, 126, 220),
    ("rv", "right ventricle", "right ventricle of heart", "right ventricular", "rv blood pool",
     "rv cavity", "right ventricle cavity", "right ventricular cavity", "right ventricular blood pool"),
)
_MYO = ClassInfo(
    2, "Myo", "Myocardium", "74281007", (241, 196, 48),
    ("myo", "myocardium", "lv myocardium", "left ventricular myocardium", "myocardium of left ventricle",
     "left ventricle myocardium", "lv myo", "lvm", "myocardium of heart", "heart muscle"),
)
_LV = ClassInfo(
    3, "LV", "Left ventricle of heart", "87878005", (214, 48, 49),
    ("lv", "left ventricle", "left ventricle of heart", "left ventricular", "lv blood pool",
     "lv cavity", "left ventricle cavity", "left ventricular cavity", "left ventricular blood pool",
     "lv bp", "lvbp"),
)

PRESET_CLASSES: dict[str, tuple[ClassInfo, ...]] = {
    "la": (_LA,),
    "acdc": (_RV, _MYO, _LV),
}


def classes(preset: str) -> tuple[ClassInfo, ...]:
    """The foreground classes of ``preset`` in value order (background 0 is implicit)."""
    key = str(preset).lower()
    if key not in PRESET_CLASSES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_CLASSES)}")
    return PRESET_CLASSES[key]


def class_info(preset: str, value: int) -> ClassInfo:
    for info in classes(preset):
        if info.value == value:
            return info
    raise ValueError(f"preset {preset!r} has no class with value {value}")


def class_values(preset: str) -> tuple[int, ...]:
    return tuple(info.value for info in classes(preset))


def normalize_name(name: str) -> str:
    """Lower case, ``_``/``-``/``.`` as spaces, whitespace collapsed: "LV_blood-pool" -> "lv blood pool"."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-.]+", " ", str(name))).strip().lower()


def class_value_for_segment_name(preset: str, name: str) -> int | None:
    """The class value a segment called ``name`` stands for in ``preset``, or None.

    Matches the canonical name, the SNOMED meaning or a synonym, case-insensitively; failing that, a
    name that IS a class value: "1", "2", "3" (how label files are often named) or "Label_3" (Slicer's
    name for value 3 of a labelmap imported without a colour table).  Never "Segment_N": that number is
    only the order in which segments were painted.
    """
    key = normalize_name(name)
    if not key:
        return None
    for info in classes(preset):
        candidates = {normalize_name(info.name), normalize_name(info.meaning)}
        candidates.update(normalize_name(s) for s in info.synonyms)
        if key in candidates:
            return info.value
    number = re.fullmatch(r"(?:label ?)?(\d+)", key)
    if number and int(number.group(1)) in class_values(preset):
        return int(number.group(1))
    return None


def terminology_entry(type_code: str, type_meaning: str, category: tuple[str, str, str] = CATEGORY) -> str:
    """Slicer's serialised terminology entry for an SCT type in our terminology context."""
    cat = "^".join(category)
    typ = f"SCT^{type_code}^{type_meaning}"
    return f"{TERMINOLOGY_CONTEXT}~{cat}~{typ}~^^~{ANATOMIC_CONTEXT}~^^~^^"


def parse_terminology_entry(entry: str) -> dict[str, tuple[str, str, str]] | None:
    """Category and type code triples of a serialised entry, or None when it is not one."""
    if not entry:
        return None
    parts = entry.split("~")
    if len(parts) < 3:
        return None

    def triple(text: str) -> tuple[str, str, str]:
        fields = text.split("^")
        fields += [""] * (3 - len(fields))
        return fields[0], fields[1], fields[2]

    return {"context": (parts[0], "", ""), "category": triple(parts[1]), "type": triple(parts[2])}


def class_value_for_terminology(preset: str, entry: str) -> int | None:
    """The class whose SNOMED CT type code appears in a segment's terminology entry, or None."""
    parsed = parse_terminology_entry(entry)
    if parsed is None:
        return None
    scheme, code, _meaning = parsed["type"]
    if scheme.upper() not in ("SCT", "SNOMED", "SRT") or not code:
        return None
    for info in classes(preset):
        if info.code == code:
            return info.value
    return None


def accepted_names(preset: str) -> list[str]:
    """Human-readable list of accepted segment names (for error messages and the GUI)."""
    out = []
    for info in classes(preset):
        others = [s for s in info.synonyms if s != info.name.lower()][:4]
        out.append(f"{info.name} ({', '.join(others)}, ...)")
    return out


def all_classes() -> list[ClassInfo]:
    """Every class of every preset, once each (by SNOMED code)."""
    out: dict[str, ClassInfo] = {}
    for infos in PRESET_CLASSES.values():
        for info in infos:
            out.setdefault(info.code, info)
    return list(out.values())


def terminology_document() -> dict:
    """Our terminology context in Slicer's segment-context JSON format (the shipped file's content)."""
    scheme, code, meaning = CATEGORY
    types = [
        {"CodingSchemeDesignator": "SCT", "CodeValue": info.code, "CodeMeaning": info.meaning,
         "3dSlicerLabel": info.name, "recommendedDisplayRGBValue": list(info.rgb)}
        for info in sorted(all_classes(), key=lambda i: i.name)
    ]
    return {
        "SegmentationCategoryTypeContextName": TERMINOLOGY_CONTEXT,
        "@schema": SEGMENT_CONTEXT_SCHEMA,
        "SegmentationCodes": {"Category": [{"CodingSchemeDesignator": scheme, "CodeValue": code, "CodeMeaning": meaning,
                                            "showAnatomy": "false", "Type": types}]},
    }
