"""Model cards: Hugging Face front matter through ModelCardData (eval results as model-index), the licence
warning, and the shipped default policy's cards regenerate from the generator exactly as committed."""

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from vla.commands.model_card import main
from vla.errors import ConfigError
from vla.finetune.model_card import build_card, inputs_from_run, render_card

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "model_cards" / "vla-default-policy" / "suite.json"
CARDS = [REPO / "model_cards" / "vla-default-policy.md", REPO / "vla" / "default_policy" / "README.md"]


@pytest.fixture(scope="module")
def default_inputs():
    return inputs_from_run(REPO / "vla" / "default_policy")


def _command(card: Path) -> list[str]:
    """The generator command a card names as its source (its last line)."""
    m = re.search(r"`(python -m vla\.commands\.model_card [^`]+)`\s*$", card.read_text())
    assert m, f"{card} does not say how it was generated"
    return shlex.split(m.group(1))


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_default_policy_card_regenerates_identically(card):
    """The command the card names, run from the repository root, writes the committed file byte for byte."""
    args = _command(card)[3:]
    assert args[args.index("--out") + 1] == card.relative_to(REPO).as_posix()
    run = subprocess.run([sys.executable, "-m", "vla.commands.model_card", *args, "--check"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout + run.stderr


def test_check_reports_a_stale_card(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    stale = tmp_path / "card.md"
    stale.write_text("old\n")
    assert main(["--run", "vla/default_policy", "--out", str(stale), "--check"]) == 1
    assert "regenerate it with python -m vla.commands.model_card" in capsys.readouterr().out
    assert stale.read_text() == "old\n"
    assert main(["--run", str(tmp_path), "--out", str(stale)]) == 2  # not a run: refused, nothing written


def test_default_policy_card_front_matter_holds_the_closed_loop_results():
    suite = json.loads(SUITE.read_text())
    card = ModelCard.load(CARDS[0])
    assert card.data.pipeline_tag == "robotics" and card.data.library_name == "peft"
    assert card.data.base_model == "default" and card.data.model_name == "default_policy"
    closed = [r for r in card.data.eval_results if r.metric_type == "success_rate"]
    assert [(r.dataset_type, r.metric_value) for r in closed] == [
        (f"{t['env']}/{t['task']}", t["success_rate"]) for t in suite["tasks"]]
    assert {(r.task_type, r.task_name, r.dataset_split) for r in closed} == {
        ("robotics", "robot manipulation", "seeds 100000-100009")}
    assert dict((r.dataset_name, r.metric_value) for r in closed)["metaworld drawer-close-v3"] == 1.0
    offline = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results
               if r.dataset_split == "validation"}
    validation = json.loads((REPO / "vla" / "default_policy" / "vla_config.json").read_text())["training"]["validation"]
    assert len(offline) == 12
    assert offline[("so101", "token_accuracy")] == pytest.approx(validation["so101"]["token_accuracy"], abs=1e-5)
    # the YAML itself: one model-index entry per task and dataset
    front = card.data.to_dict()
    assert len(front["model-index"][0]["results"]) == 3 + len(suite["tasks"])


def test_default_policy_card_speaks_to_users():
    text = CARDS[0].read_text()
    body = text.split("\n---\n", 1)[1]
    for needed in ("## What it solves", "| **suite** | mean over 7 tasks | **38.6%**", "## How it was evaluated",
                   "seeds 100000-100009", "bash scripts/eval_default_policy.sh", "## How to use",
                   "](../finetune/configs/default_policy.yaml)", "](../research/default_policy_ablations.md)",
                   "## Limitations", "## Data provenance and licences", "](vla-default-policy/suite.png)",
                   *(f"does not solve {t['task']} 0/10" for t in json.loads(SUITE.read_text())["tasks"]
                     if t["success_rate"] == 0)):
        assert needed in body, needed
    for link in re.findall(r"\]\(([^)#]+)\)", body):
        assert (CARDS[0].parent / link).exists(), link
    assert str(REPO) not in text and "](/" not in text  # nothing of the machine it was generated on
    for internal in ("issue", "we aimed", "session", "target was"):
        assert internal not in text.lower(), internal


def test_non_commercial_and_unknown_data_open_the_card_with_a_warning(default_inputs):
    inputs = copy.deepcopy(default_inputs)
    inputs["datasets"][1]["license"] = "CC BY-NC 4.0"
    inputs["datasets"][2]["license"] = None
    card = ModelCard(render_card(inputs))
    assert card.data.license == "other" and card.data.license_name == "mixture-most-restrictive"
    assert "dataset so101: cc-by-nc-4.0" in card.data.to_dict()["license_details"]
    head = card.text.split("## ")[0]
    assert "LICENCE WARNING" in head and "NOT cleared for commercial use" in head
    assert "dataset so101 (**cc-by-nc-4.0**) forbid(s) commercial use" in head
    assert "dataset aloha state(s) no licence (**unknown**" in head
    assert "Some training data has no stated licence" in card.text


def test_permissive_data_has_no_warning_and_one_licence(default_inputs):
    inputs = copy.deepcopy(default_inputs)
    for d in inputs["datasets"]:
        d["license"] = "Apache License (from LICENSE)"
    card = ModelCard(render_card(inputs))
    assert card.data.license == "apache-2.0" and "LICENCE WARNING" not in card.text
    # a run card without closed-loop results says so, and how to add them
    assert "Not evaluated in closed loop yet" in card.text and "--eval EVAL_DIR/suite.json" in card.text
    assert all(r.dataset_split == "validation" for r in card.data.eval_results)


def test_converted_recordings_are_listed_with_their_sha256(default_inputs):
    inputs = copy.deepcopy(default_inputs)
    files = [{"file": f"run_{i}.mcap", "sha256": f"{i:064x}"} for i in range(25)]
    inputs["datasets"][0]["provenance"] = {"source_format": "mcap", "source_files": [{"files": files}]}
    text = render_card(inputs)
    assert f"- `sawyer`: `run_3.mcap` sha256 `{3:064x}`" in text
    assert "- `sawyer`: and 5 more (all in the dataset's meta/info.json)" in text


def test_a_template_with_an_unknown_variable_is_refused(default_inputs, tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n\n# {{ title }} {{ no_such_value }}\n")
    with pytest.raises(ConfigError, match="no_such_value"):
        build_card(default_inputs, template)
    with pytest.raises(ConfigError, match="missing"):
        build_card(default_inputs, tmp_path / "absent.md")


def test_help_names_the_default_policy_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--out model_cards/vla-default-policy.md" in capsys.readouterr().out
