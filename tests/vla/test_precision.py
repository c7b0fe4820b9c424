"""Precision chosen from the hardware, bf16 that keeps the actions, the folded vision tower, and bf16 training.

Tolerances stated here: on the tiny model, bf16 chunks agree with fp32 on >= 95% of action tokens and
differ by <= 0.01 on average in normalized units ([-1, 1]); folding BatchNorm changes the tower's
features by < 1e-4.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla.backbones.efficientnet import EfficientNetLiteConfig, EfficientNetLiteVisionModel
from vla.backbones.tiny import save_tiny_vlm
from vla.errors import ConfigError
from vla.finetune.metrics import read_metrics
from vla.finetune.lora import apply_lora, store_frozen_weights
from vla.finetune.config import FinetuneConfig
from vla.finetune.testing import tiny_run_args, write_tiny_mixture
from vla.policy import VLAPolicy, optimize_model_for_inference
from vla.precision import CAPABILITY_ENV, bf16_probe_speedup, cpu_capability, resolve_precision
from vla.testing import make_tiny_checkpoint, make_tiny_policy
from vla.types import PredictRequest


def test_auto_keeps_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setenv(CAPABILITY_ENV, "none")
    chosen = resolve_precision("auto")
    assert chosen.dtype == torch.float32
    assert "no AMX or AVX512-BF16" in chosen.reason and CAPABILITY_ENV in chosen.reason


def test_auto_on_a_bf16_cpu_is_confirmed_by_the_probe(monkeypatch):
    monkeypatch.setenv(CAPABILITY_ENV, "amx")
    chosen = resolve_precision("auto")
    fast = bf16_probe_speedup() >= 1.3
    assert chosen.dtype == (torch.bfloat16 if fast else torch.float32)
    assert "AMX" in chosen.reason and "probe: bf16 matmul" in chosen.reason


def test_the_real_cpu_flags_decide_without_an_override(monkeypatch):
    monkeypatch.delenv(CAPABILITY_ENV, raising=False)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    expected = "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "none"
    assert cpu_capability() == (expected if flags else None)
    if expected == "none":
        assert resolve_precision("auto").dtype == torch.float32


def test_explicit_and_bad_dtypes(monkeypatch):
    assert resolve_precision("bfloat16").dtype == torch.bfloat16
    assert resolve_precision("fp32") == resolve_precision(torch.float32)
    assert resolve_precision("float32").reason == "asked for"
    with pytest.raises(ConfigError, match="unknown dtype 'int4'.*auto"):
        resolve_precision("int4")
    monkeypatch.setenv(CAPABILITY_ENV, "sse2")
    with pytest.raises(ConfigError, match=f"{CAPABILITY_ENV}='sse2'.*amx"):
        resolve_precision("auto")


def test_bf16_predictions_agree_with_fp32_on_the_tiny_model(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "tiny", decoding="parallel", bins=256)
    fp32 = VLAPolicy.from_pretrained(ckpt, dtype="float32")
    bf16 = VLAPolicy.from_pretrained(ckpt, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.metadata()["dtype"] == "bfloat16" and fp32.metadata()["dtype"] == "float32"
    rng = np.random.default_rng(0)
    for emb in fp32.embodiments.values():
        reqs = [PredictRequest([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in emb.cameras],
                               "pick up the cube", emb.name) for _ in range(8)]
        codec = fp32.codec(emb.name)
        chunks = [[c.actions for c in p.predict_batch(reqs)] for p in (fp32, bf16)]
        ids_a, ids_b = (np.array([codec.encode(c) for c in x]) for x in chunks)
        assert np.mean(ids_a == ids_b) >= 0.95, emb.name
        a, b = (np.array([codec.normalize(c) for c in x]) for x in chunks)
        assert np.abs(a - b).mean() <= 0.01, emb.name


def _tower_with_statistics() -> EfficientNetLiteVisionModel:
    """A small EfficientNet-Lite whose BatchNorms have non-trivial statistics (as after ImageNet training)."""
    config = EfficientNetLiteConfig(image_size=64, hidden_size=48, pool_grid=2, stem_channels=8,
                                    kernel_sizes=[3, 5], strides=[1, 2], num_block_repeats=[1, 2],
                                    expand_ratios=[1, 6], in_channels=[8, 8], out_channels=[8, 16])
    torch.manual_seed(0)
    tower = EfficientNetLiteVisionModel(config).eval()
    for m in tower.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return tower


def test_folded_tower_gives_the_same_features_and_refuses_to_train_or_save(tmp_path):
    tower = _tower_with_statistics()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = tower(pixels).last_hidden_state
        folded = tower.fold_batch_norm()
        after = folded(pixels).last_hidden_state
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()

    policy = make_tiny_policy("llava")
    policy.model.model.vision_tower = folded  # the guard looks for any folded module
    with pytest.raises(ConfigError, match="optimize_for_inference=False"):
        policy.save_pretrained(tmp_path / "out")


def test_optimize_for_inference_folds_in_fp32_before_a_bf16_cast():
    tower = _tower_with_statistics().to(torch.bfloat16)
    model = torch.nn.Sequential(tower)
    optimize_model_for_inference(model)
    assert tower.batch_norm_folded and next(tower.parameters()).dtype == torch.bfloat16


def test_bf16_training_keeps_trainable_weights_fp32_and_resumes_exactly(tmp_path):
    # Where frozen weights go: bf16; LoRA, action-token rows and the projector stay fp32.
    policy = make_tiny_policy("llava", decoding="parallel")
    cfg = FinetuneConfig(base="tiny", out=None)
    model = apply_lora(policy, cfg, 0)
    store_frozen_weights(model, torch.bfloat16)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert set(trainable.values()) == {torch.float32} and set(frozen.values()) == {torch.bfloat16}
    assert any("lora_" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)

    # A bf16 run resumed from its step-1 checkpoint repeats an uninterrupted run's losses exactly. In a
    # process of its own: accelerate fixes the mixed precision once per process.
    base, data = save_tiny_vlm(tmp_path / "base", "llava"), write_tiny_mixture(tmp_path / "data")
    opts = dict(train__precision="bf16", checkpoint__every=1, checkpoint__keep_last=10, eval__trace_episodes=0,
                data__val_fraction=0)
    runs = [tiny_run_args(base, data, tmp_path / "whole", train__steps=3, **opts),
            tiny_run_args(base, data, tmp_path / "cut", train__steps=1, **opts),
            ["--resume", str(tmp_path / "cut"), "--train.steps", "3"]]
    script = "import sys, json\nfrom vla.commands.finetune import main\nsys.exit(max(main(a) for a in json.loads(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [{r["step"]: r["loss"] for r in read_metrics(tmp_path / run) if r["split"] == "train"}
              for run in ("whole", "cut")]
    assert [losses[0][s] for s in range(1, 4)] == [losses[1][s] for s in range(1, 4)]
    training = json.loads((tmp_path / "cut" / "vla_config.json").read_text())["training"]
    assert training["precision"] == "bf16" and training["precision_reason"] == "asked for"
    # The checkpoint format is unchanged: the adapter's tensors are fp32.
    assert {t.dtype for t in load_file(tmp_path / "cut" / "adapter_model.safetensors").values()} == {torch.float32}
