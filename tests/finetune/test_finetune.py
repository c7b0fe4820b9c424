# Over 400 lines: end-to-end runs that share one tiny mixture; splitting would rebuild it per file.
"""LoRA fine-tuning end to end on tiny VLMs and tiny generated LeRobot datasets.

Covers: a run with a falling loss whose directory loads and predicts, merge parity of `vla export`,
the model card (incl. the licence warning), exact resume after SIGKILL (subprocess) and after
SIGTERM, checkpoint write failures, the peft setup per VLM family, the action-row and vision-cache
shortcuts against their plain counterparts, and bad inputs.
"""

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vla.action_codec import ActionCodec
from vla.finetune import checkpointing as ckpt
from vla.commands.finetune import main
from vla.finetune.config import FinetuneConfig
from vla.commands.export import main as export_main
from vla.finetune.metrics import read_metrics
from vla.finetune.lora import apply_lora, parameter_groups, set_train_mode
from vla.finetune.loss import ActionLoss
from vla.finetune.vision_cache import install_vision_cache
from vla.finetune.testing import tiny_run_args, write_tiny_dataset, write_tiny_mixture
from vla.backbones.tiny import FAMILIES, build_tiny_vlm, save_tiny_vlm
from vla.decoding import action_head
from vla.errors import CheckpointError
from vla.policy import VLAPolicy
from vla.testing import make_tiny_checkpoint, make_tiny_policy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matrices: one thread is several times faster than two contended ones, and runs in
    # subprocesses (OMP_NUM_THREADS=1) then use the very same kernels as in-process runs.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return {"root": root, "base": save_tiny_vlm(root / "base", "llava"), "data": write_tiny_mixture(root / "data")}


def _train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def _logits(policy, requests):
    inputs = policy.prepare(requests)
    with torch.no_grad():
        return policy.model(**inputs).logits


def _requests(run_dir):
    from vla.types import PredictRequest

    ex = json.loads((Path(run_dir) / "examples" / "examples.json").read_text())
    return [PredictRequest([np.asarray(Image.open(Path(run_dir) / "examples" / f)) for f in e["images"]],
                           e["instruction"], name) for name, e in ex.items()]


def test_tiny_run_learns_loads_predicts_and_merges(tiny, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_run_args(tiny["base"], tiny["data"], run, eval__every=15)) == 0
    losses = _train_losses(run)
    assert len(losses) == 30
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in range(26, 31)])
    assert last < 0.6 * first, (first, last)

    val = [r for r in read_metrics(run) if r["split"] == "val"]
    assert {r["embodiment"] for r in val} == {"arm", "biarm"} and {r["step"] for r in val} == {15, 30}
    for r in val:
        assert 0 <= r["token_accuracy"] <= 1 and r["l1"] >= 0 and r["rmse"] >= r["l1"] * 0.999
        assert r["valid_decodes"] == 1.0
    for png in ("training_curves.png", "action_traces.png"):
        assert Image.open(run / png).format == "PNG"
    done = ckpt.complete_checkpoints(run)
    assert [s for s, _ in done] == [30]

    # The run directory is an adapter checkpoint on the recorded base.
    cfg = json.loads((run / "vla_config.json").read_text())
    assert cfg["base_model"] == str(Path(tiny["base"]).resolve())
    assert {e["name"]: len(e["action_names"]) for e in cfg["embodiments"]} == {"arm": 3, "biarm": 5}
    assert cfg["embodiments"][0]["action_stats"]["count"] == 36  # training episodes only (3 x 12 frames)
    training = cfg["training"]
    assert training["step"] == 30 and training["config"]["train"]["lr"] == 5e-3 and training["finished"]
    assert {d["name"]: d["license"] for d in training["datasets"]} == {"arm": "apache-2.0", "biarm": "cc-by-nc-4.0"}
    assert set(training["validation"]) == {"arm", "biarm"}
    examples = json.loads((run / "examples" / "examples.json").read_text())  # ready for `vla predict --state`
    assert {n: len(e.get("state", [])) for n, e in examples.items()} == {e["name"]: len(e["state_names"]) for e in cfg["embodiments"]}
    policy = VLAPolicy.from_pretrained(run, merge_adapter=False)
    reqs = _requests(run)
    chunk = policy.predict_batch(reqs[:1])[0]
    assert chunk.actions.shape == (4, 3) and np.all(np.isfinite(chunk.actions))

    # Model card: front matter, every dataset with its licence, and the non-commercial warning up top.
    card = (run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "other" and "cc-by-nc-4.0" in front["license_details"]
    assert front["base_model"] == str(tiny["base"]) and len(front["datasets"]) == 2
    head = card.split("## How to use")[0]
    assert "LICENCE WARNING" in head and "NOT cleared for commercial use" in head and "biarm" in head
    for text in ("| arm | arm | 3 / 1 |", "cc-by-nc-4.0", "apache-2.0", "## Limitations", "## Intended use",
                 "Round trip of the training chunks", "token accuracy"):
        assert text in card, text

    # Merged export loads without peft and matches the adapter's logits.
    merged = tmp_path / "merged"
    assert export_main([str(run), "--merge", "--out", str(merged)]) == 0
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").is_file()
    saved, sys.modules["peft"] = sys.modules.get("peft"), None  # any `import peft` now fails
    try:
        standalone = VLAPolicy.from_pretrained(merged)
    finally:
        sys.modules["peft"] = saved
    assert json.loads((merged / "vla_config.json").read_text())["base_model"] is None
    diff = (_logits(standalone, reqs) - _logits(policy, reqs)).abs().max().item()
    assert diff < 1e-4, diff
    np.testing.assert_allclose(standalone.predict_batch(reqs[:1])[0].actions, chunk.actions, atol=1e-6)

    # Adapter export: what loads, without the optimizer state, on the recorded base.
    shipped = tmp_path / "shipped"
    cfg = json.loads((run / "adapter_config.json").read_text())  # as if trained on another machine's cache
    (run / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": "/elsewhere/cache"}))
    assert export_main([str(run), "--adapter", "--out", str(shipped)]) == 0
    assert not (shipped / "training_state.pt").exists() and (shipped / "README.md").is_file()
    assert json.loads((shipped / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny["base"])
    np.testing.assert_array_equal(VLAPolicy.from_pretrained(shipped).predict_batch(reqs[:1])[0].actions, chunk.actions)


@pytest.mark.parametrize("extra", [
    {"model__action_tokenizer": "fast", "model__decoding": "autoregressive", "model__fast_vocab_size": 64,
     "train__padded_steps": "drop", "train__grad_accum": 2},
    {"lora__target_modules": "q_proj,v_proj", "train__gradient_checkpointing": "true"},  # parallel: the default
])
def test_fast_and_parallel_runs_save_what_they_need(tiny, tmp_path, extra):
    run = tmp_path / "run"
    assert main(tiny_run_args(tiny["base"], tiny["data"], run, train__steps=4, eval__trace_episodes=0, **extra)) == 0
    policy = VLAPolicy.from_pretrained(run)
    if "model__action_tokenizer" in extra:
        assert (run / "action_tokenizer_bpe.json").is_file() and policy.action_tokenizer.kind == "fast"
    else:
        assert policy.config.decoding == "parallel" and policy.config.query_token_id is not None
    chunk = policy.predict_batch(_requests(run)[1:])[0]
    assert chunk.actions.shape == (4, 5) and np.all(np.isfinite(chunk.actions))
    training = json.loads((run / "vla_config.json").read_text())["training"]
    assert training["samples_seen"] == 4 * 4 * int(extra.get("train__grad_accum", 1))
    assert len(_train_losses(run)) == 4


def test_displacement_actions_are_trained_as_mean_displacement_and_served_per_step(tiny, tmp_path, capsys):
    from vla.finetune.data import targets

    run = tmp_path / "run"
    assert main(tiny_run_args(tiny["base"], tiny["data"], run, train__steps=2, eval__trace_episodes=0,
                              model__decoding="parallel", model__displacement_actions="[arm_a0, arm_a1]")) == 0
    policy = VLAPolicy.from_pretrained(run)
    arm, biarm = policy.embodiments["arm"], policy.embodiments["biarm"]
    assert arm.displacement == [True, True, False] and biarm.displacement is None
    # The labels are the bins of the running mean of the increments, not of the increments themselves.
    actions = np.array([[0.1, -0.2, 0.3], [0.3, 0.2, 0.3], [0.5, 0.0, -0.3], [0.1, 0.4, 0.0]])
    sample = {"embodiment": "arm", "actions": actions, "action_mask": np.ones(4, bool)}
    _, labels = targets([sample], policy, "mask")
    running = actions.copy()
    running[:, :2] = np.cumsum(actions[:, :2], 0) / np.arange(1, 5)[:, None]
    plain = dataclasses.replace(arm, displacement=None)
    np.testing.assert_array_equal(labels[0].numpy(), policy.action_tokenizer.encode(ActionCodec(plain).normalize(running)))
    # Served chunks are per-step increments again: decoding inverts the encoding.
    chunk = policy.predict_batch(_requests(run)[:1])[0]
    codec = policy.codec("arm")
    np.testing.assert_allclose(codec.decode(codec.encode(chunk.actions)), chunk.actions, atol=1e-9)
    # A name no robot has is an error that lists the robots' actions.
    assert main(tiny_run_args(tiny["base"], tiny["data"], tmp_path / "bad", model__displacement_actions="[arm_x]")) == 2
    assert "model.displacement_actions names ['arm_x'], which no robot's actions have: arm: ['arm_a0'" in \
        capsys.readouterr().err
    # Continuing from the checkpoint with another encoding would mislabel what the model learnt.
    assert export_main([str(run), "--merge", "--out", str(tmp_path / "merged")]) == 0
    assert main(tiny_run_args(tmp_path / "merged", {"arm": tiny["data"]["arm"]}, tmp_path / "more",
                              model__decoding="parallel", model__displacement_actions="[arm_a0]")) == 2
    assert "the base checkpoint encodes displacement for ['arm_a0', 'arm_a1'], this config for ['arm_a0']" in \
        capsys.readouterr().err


def test_resume_after_sigkill_and_sigterm_repeats_the_losses(tiny, tmp_path):
    run = tmp_path / "killed"
    # 1. A long run in a subprocess, killed with SIGKILL right after its first complete checkpoint.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    args = tiny_run_args(tiny["base"], tiny["data"], run, train__steps=1000, checkpoint__every=3,
                         checkpoint__keep_last=10, eval__trace_episodes=0)
    proc = subprocess.Popen([sys.executable, "-m", "vla.cli", "finetune", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not ckpt.complete_checkpoints(run):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = ckpt.complete_checkpoints(run)[-1][0]

    # 2. Resume in-process; SIGTERM (a real signal to this process) once it has saved a newer checkpoint.
    def terminate():
        while ckpt.complete_checkpoints(run)[-1][0] <= killed_at:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate, daemon=True).start()
    assert main(["--resume", str(run)]) == 143
    last = ckpt.complete_checkpoints(run)[-1]
    assert last[0] > killed_at
    assert json.loads((last[1] / ckpt.MARKER).read_text())["interrupted"] is True

    # 3. Resume again to a fixed end, and compare with one uninterrupted run of the same length.
    end = last[0] + 3
    assert main(["--resume", str(run), "--train.steps", str(end)]) == 0
    reference = tmp_path / "reference"
    assert main(tiny_run_args(tiny["base"], tiny["data"], reference, train__steps=end, checkpoint__every=3,
                              eval__trace_episodes=0)) == 0
    resumed, straight = _train_losses(run), _train_losses(reference)
    assert sorted(resumed) == list(range(1, end + 1)) == sorted(straight)
    np.testing.assert_allclose([resumed[s] for s in range(1, end + 1)], [straight[s] for s in range(1, end + 1)],
                               rtol=1e-6, atol=0)


def test_update_policy_is_one_optimizer_step_that_reports_its_metrics(tiny):
    from vla.finetune.config import DatasetSpec
    from vla.finetune.session import Session
    from vla.finetune.trainer import StepMetrics, update_policy

    cfg = FinetuneConfig(base=str(tiny["base"]), out=None, seed=0)
    cfg.datasets = {name: DatasetSpec(path=str(path)) for name, path in tiny["data"].items()}
    cfg.model.chunk_size, cfg.model.bins, cfg.lora.r = 4, 16, 8
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.lr, cfg.train.warmup_steps = 2, 2, 5e-3, 0
    cfg.data.val_fraction = 0.0
    session = Session(cfg, dry_run=True, log=lambda text: None)
    session.build()
    lora = {n: p.detach().clone() for n, p in session.model.named_parameters() if "lora_B" in n}
    batches = iter(session.loader)
    first = update_policy(session, batches, 0)
    # grad_accum micro-batches make one step: every sample counted, the schedule advanced once
    assert first.steps == 1 and first.samples == 4 and session.scheduler.last_epoch == 1
    assert np.isfinite(first.loss) and first.loss > 0 and np.isfinite(first.grad_norm)
    assert 0 < first.n_tokens < first.tokens and 0 <= first.correct <= first.n_tokens
    assert any(not torch.equal(p, lora[n]) for n, p in session.model.named_parameters() if n in lora)  # it stepped
    window = first + update_policy(session, batches, 1)
    assert isinstance(window, StepMetrics) and window.steps == 2 and window.samples == 8


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tiny, tmp_path, capsys):
    run = tmp_path / "run"

    def interrupt():
        while not (run / "metrics.jsonl").is_file():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert main(tiny_run_args(tiny["base"], tiny["data"], run, train__steps=1000)) == 130
    (step, path), = ckpt.complete_checkpoints(run)
    assert json.loads((path / ckpt.MARKER).read_text())["interrupted"] is True
    assert step < 1000 and f"vla finetune --resume {run}" in capsys.readouterr().err


def test_failed_checkpoint_write_leaves_nothing_marked_complete(tmp_path):
    policy = make_tiny_policy("llava")
    ckpt.save_checkpoint(tmp_path, 1, policy.save_pretrained, {}, keep_last=2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # files over 64 KiB fail with EFBIG, like a full disk
    try:
        with pytest.raises(CheckpointError, match=r"could not write the checkpoint of step 2 .*File too large.*"
                                                  r"Nothing half-written was kept; the last complete checkpoint is"):
            ckpt.save_checkpoint(tmp_path, 2, policy.save_pretrained, {}, keep_last=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    # A directory whose files do not match the marker (e.g. truncated) is never taken as complete.
    (tmp_path / "checkpoints" / "step-00000001" / "model.safetensors").write_bytes(b"x")
    assert ckpt.latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_setup_trains_lm_lora_token_rows_and_projector_only(family):
    policy = make_tiny_policy(family)
    model = apply_lora(policy, FinetuneConfig(), seed=0)
    groups = parameter_groups(model)
    assert groups["lora"] > 0 and groups["action_token_rows"] > 0 and groups["projector"] > 0
    assert groups["vision_tower"] == 0 and groups["other"] == 0
    if family == "qwen3_vl":  # the DeepStack mergers are projectors too
        assert any("deepstack_merger_list.0.modules_to_save" in n for n, p in model.named_parameters() if p.requires_grad)
    lm = "text_model" if family in ("idefics3", "smolvlm") else "language_model"
    lora_modules = {n.split(".lora_")[0] for n, _ in model.named_parameters() if "lora_" in n}
    assert lora_modules and all(f".{lm}." in n for n in lora_modules)
    # One optimizer step moves the action rows of the output layer (tied or not), and only those.
    ids = policy.config.action_token_ids
    before = action_head(model, ids)[0].detach().clone()
    head = model.get_base_model().get_output_embeddings()
    other = head.weight[: min(ids)].detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    set_train_mode(model, True, False)
    samples = [{"images": [np.zeros((32, 32, 3), np.uint8)] * 2, "instruction": "go", "state": None,
                "actions": np.zeros((2, 14), np.float32), "action_mask": np.ones(2, bool), "embodiment": "aloha",
                "episode_index": 0, "frame_index": 0, "dataset": "d"}]
    from vla.finetune.data import make_batch

    batch = make_batch(samples, policy, "mask")
    loss = ActionLoss(model, ids, False)(batch["inputs"], batch["appended"], batch["labels"])[0]
    loss.backward()
    opt.step()
    after = action_head(model, ids)[0]
    assert not torch.allclose(after, before)
    torch.testing.assert_close(head.weight[: min(ids)], other, rtol=0, atol=0)
    # the gathered rows are exactly the rows of peft's own merged output matrix
    adapter = head.token_adapter
    merged = adapter.get_merged_weights(adapter.active_adapters)
    torch.testing.assert_close(after, merged[torch.as_tensor(ids)], rtol=0, atol=0)


def test_trainable_vision_tower_is_opt_in_and_turns_the_cache_off(tiny, tmp_path, capsys):
    cfg = FinetuneConfig()
    cfg.lora.train_vision = True
    policy = make_tiny_policy("llava")
    groups = parameter_groups(apply_lora(policy, cfg, seed=0))
    assert groups["vision_tower"] > 0 and groups["projector"] > 0
    assert main(tiny_run_args(tiny["base"], tiny["data"], tmp_path / "r", lora__train_vision="true",
                              train__cache_vision="on") + ["--dry-run"]) == 2
    assert "needs a frozen vision tower" in capsys.readouterr().err


def test_image_splitting_turns_the_per_frame_vision_cache_off(tiny, tmp_path, capsys):
    # Idefics3 image splitting feeds the tower tiles (4 + 1 global here), not frames: caching per frame cannot serve.
    model, processor = build_tiny_vlm("idefics3")
    processor.image_processor.do_image_splitting = True
    processor.image_processor.size = {"longest_edge": 64}
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    assert main(tiny_run_args(tmp_path / "base", tiny["data"], tmp_path / "r") + ["--dry-run", "--dry-run-steps", "1"]) == 0
    out = capsys.readouterr()
    assert "vision feature cache off: the processor gives the vision tower tiles" in out.err
    assert "vision cache off" in out.out
    assert main(tiny_run_args(tmp_path / "base", tiny["data"], tmp_path / "r", train__cache_vision="on")
                + ["--dry-run"]) == 2
    assert "train.cache_vision=on cannot work here" in capsys.readouterr().err


def test_frozen_tower_and_batchnorm_stay_in_eval_mode():
    policy = make_tiny_policy("llava")
    tower = policy.model.model.vision_tower
    tower.add_module("bn", torch.nn.BatchNorm2d(3))
    model = apply_lora(policy, FinetuneConfig(), seed=0)
    set_train_mode(model, True, train_vision=False)
    assert model.training and not tower.training and not tower.bn.training
    set_train_mode(model, True, train_vision=True)
    assert tower.training and not tower.bn.training


def test_vision_cache_gives_the_same_loss_and_gradients():
    policy = make_tiny_policy("llava")
    model = apply_lora(policy, FinetuneConfig(), seed=0)
    loss_fn = ActionLoss(model, policy.config.action_token_ids, False)
    rng = np.random.default_rng(0)
    samples = [{"images": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)], "instruction": f"task {i}",
                "state": None, "actions": rng.normal(size=(4, 4)).astype(np.float32), "action_mask": np.ones(4, bool),
                "embodiment": "sawyer", "episode_index": i, "frame_index": 0, "dataset": "d"} for i in range(3)]
    from vla.finetune.data import make_batch

    batch = make_batch(samples, policy, "mask")
    plain = loss_fn(batch["inputs"], batch["appended"], batch["labels"])[0]
    cache = install_vision_cache(model, 1.0)
    for expect_hits in (0, 3):
        with cache.keys(batch["keys"]):
            cached = loss_fn(batch["inputs"], batch["appended"], batch["labels"])[0]
        assert cache.hits == expect_hits
        torch.testing.assert_close(cached, plain, rtol=1e-6, atol=1e-6)
    cache.remove()
    assert "forward" not in cache.tower.__dict__


def test_soft_bin_targets_are_a_gaussian_over_the_bins_and_one_hot_in_the_limit():
    policy = make_tiny_policy("llava")
    model = apply_lora(policy, FinetuneConfig(), seed=0)
    ids = policy.config.action_token_ids
    soft = ActionLoss(model, ids, False, label_sigma=2.0)
    bins = torch.arange(len(ids), dtype=torch.float32)
    q = soft.targets(torch.tensor([len(ids) // 2, 0]))
    torch.testing.assert_close(q.sum(-1), torch.ones(2))
    mid = len(ids) // 2
    assert q[0].argmax() == mid and torch.allclose(q[0, mid - 3], q[0, mid + 3])
    torch.testing.assert_close((q[0] * bins).sum(), torch.tensor(float(mid)))  # centred on the target bin
    torch.testing.assert_close(((q[0] * (bins - mid) ** 2).sum()).sqrt(), torch.tensor(2.0), rtol=0.05, atol=0)
    assert q[1].argmax() == 0 and q[1, 0] > q[0, mid]  # the tail past the first bin stays on the edge bins

    rng = np.random.default_rng(0)
    samples = [{"images": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)], "instruction": "go", "state": None,
                "actions": rng.normal(size=(4, 4)).astype(np.float32), "action_mask": np.ones(4, bool),
                "embodiment": "sawyer", "episode_index": 0, "frame_index": 0, "dataset": "d"}]
    from vla.finetune.data import make_batch

    batch = make_batch(samples, policy, "mask")
    args = batch["inputs"], batch["appended"], batch["labels"]
    one_hot = ActionLoss(model, ids, False)(*args)
    narrow = ActionLoss(model, ids, False, label_sigma=1e-3)(*args)
    torch.testing.assert_close(narrow[0], one_hot[0])
    wide = soft(*args)
    assert not torch.isclose(wide[0], one_hot[0]) and wide[1:] == one_hot[1:]  # same tokens counted and scored


def test_bad_inputs_fail_before_training_with_a_clear_message(tiny, tmp_path, capsys):
    data = tiny["data"]

    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    # The base is not a vision-language model.
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "llm")
    assert "not a supported vision-language model" in err(tiny_run_args(tmp_path / "llm", data, tmp_path / "r1"))
    assert "no such model directory" in err(tiny_run_args(tmp_path / "nope", data, tmp_path / "r2"))
    # A chunk longer than every episode.
    assert "chunk size 40 is longer than every episode" in err(
        tiny_run_args(tiny["base"], data, tmp_path / "r3", model__chunk_size=40))
    # A dataset directory that does not exist.
    assert "is not a LeRobot dataset" in err(tiny_run_args(tiny["base"], {"arm": tmp_path / "none"}, tmp_path / "r4"))
    # QLoRA without CUDA/bitsandbytes.
    if not torch.cuda.is_available():
        assert "QLoRA" in err(tiny_run_args(tiny["base"], data, tmp_path / "r5", lora__quantize="4bit"))
    # The out directory already holds something.
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "exists and is not empty" in err(tiny_run_args(tiny["base"], data, tmp_path / "full"))
    # Continuing from a VLA checkpoint whose 'sawyer' has 4 action dims with 3-dim 'sawyer' data.
    vla_base = make_tiny_checkpoint(tmp_path / "vla_base", "llava")
    sawyer = write_tiny_dataset(tmp_path / "sawyer", episodes=2, length=8, action_dim=3, cameras=["corner"],
                                robot_type="sawyer")
    msg = err(tiny_run_args(vla_base, {"sawyer": sawyer}, tmp_path / "r6", model__bins=32,
                                 model__decoding="autoregressive"))  # the base decodes autoregressively
    assert "base checkpoint's 'sawyer' has 4" in msg and "another embodiment name" in msg
    assert not any((tmp_path / f"r{i}").exists() and any((tmp_path / f"r{i}").iterdir()) for i in (1, 2, 4, 5))


def test_dry_run_prints_the_plan_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny["base"], tiny["data"], out) + ["--dry-run", "--dry-run-steps", "1"]) == 0
    text = capsys.readouterr().out
    for what in ("trainable parameters: lora", "tokens/sample", "steps: 30 x 4 samples", "s/step", "licence cc-by-nc-4.0",
                 "memory: peak RSS about"):
        assert what in text, what
    assert not out.exists()
    # A run shorter than the timed micro-batches is still planned.
    assert main(tiny_run_args(tiny["base"], tiny["data"], out, train__steps=1) + ["--dry-run", "--dry-run-steps", "2"]) == 0
