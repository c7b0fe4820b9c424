"""Qwen2.5-VL, Qwen3-VL, SmolVLM2 and Gemma 3 on tiny configs, without torchvision: the published prompt,
M-RoPE positions in both decodings, and fine-tune -> resume -> reload -> `vla serve` parity per family.
(Predict, batching, save/reload and the generate reference run for every family in test_policy.py.)"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vla import VLAPolicy
from vla.backbones import processors
from vla.backbones.tiny import save_tiny_vlm
from vla.decoding import decode_autoregressive, extend, parallel_logits, unwrap
from vla.commands.finetune import main as finetune_main
from vla.finetune.metrics import read_metrics
from vla.finetune.testing import tiny_run_args, write_tiny_dataset
from vla.prompt import image_placeholder
from vla.testing import make_tiny_policy
from vla.types import PredictRequest

NEW = ("qwen2_5_vl", "qwen3_vl", "smolvlm", "gemma3")
# a 32x32 frame: Qwen 4x4 patches of 8 px merged 2x2 -> 4 pads; SmolVLM 16 tokens between its markers
EXPANDED = {
    "qwen2_5_vl": "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>",
    "qwen3_vl": "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>",
    "smolvlm": "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>",
}


def _img(seed, shape=(40, 50, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("backbones")


@pytest.mark.parametrize("family", list(EXPANDED))
def test_fallback_is_announced_once_and_prompts_as_the_published_template(family, root, capsys):
    base = save_tiny_vlm(root / f"layout-{family}", family)
    assert {"preprocessor_config.json", "chat_template.json", "tokenizer.json"} <= {p.name for p in base.iterdir()}
    processors._announce.cache_clear()
    config = json.loads((base / "config.json").read_text())
    first = processors.load_processor(base, config["model_type"])
    again = processors.load_processor(base, config["model_type"])
    assert capsys.readouterr().err.count("cannot be built without torchvision") == 1
    assert processors.is_image_only(first) and type(again).__name__ == type(first).__mro__[1].__name__
    # The published chat template's text with the image expanded by the model's documented rule...
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "pick up the red cube"}]}]
    text = first.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    marker = {"smolvlm": "<image>"}.get(family, "<|vision_start|><|image_pad|><|vision_end|>")
    assert text.count(marker) == 1 and image_placeholder(first) == marker  # VLA prompts write images the same way
    reference = first.tokenizer(text.replace(marker, EXPANDED[family]), add_special_tokens=False)["input_ids"]
    # ...is token for token what the fallback processor gives, and the model accepts it
    frame = Image.fromarray(_img(0, (32, 32, 3)))
    batch = first(text=[text], images=[[frame]], return_tensors="pt")
    assert batch["input_ids"][0].tolist() == reference


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_decoding_logits_equal_a_plain_full_sequence_forward(family):
    """Our decoders pass their own M-RoPE positions to the backbone and reuse a KV cache; the model's own
    forward over the whole sequence computes its positions itself: logits must agree. (The other families'
    1-D positions are checked against ``generate`` in test_policy.py.)"""
    policy = make_tiny_policy(family)
    reqs = [PredictRequest([_img(1)], "pick up the red cube", "sawyer"),
            PredictRequest([_img(2, (32, 32, 3)), _img(3, (64, 32, 3))], "transfer the cube", "aloha")]
    inputs = policy.prepare(reqs)  # left-padded: different image sizes give different prompt lengths
    ids, needed = policy.config.action_token_ids, [16, 28]
    result = decode_autoregressive(policy.model, inputs, ids, policy.action_tokenizer.token_lengths, needed,
                                   return_logits=True)
    for i, r in enumerate(reqs):
        single = policy.prepare([r])
        tokens = torch.as_tensor(ids)[torch.as_tensor(result.tokens[i])][None]
        with torch.no_grad():
            full = unwrap(policy.model)(**extend(policy.model, single, tokens)).logits[0].float()
        start = single["input_ids"].shape[1] - 1
        expected = full[start:start + len(result.tokens[i]), ids]
        ours = torch.stack([step[i] for step in result.logits[:len(result.tokens[i])]])
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)

    parallel = make_tiny_policy(family, decoding="parallel")
    inputs = parallel.prepare(reqs[:1] * 2)
    queries = torch.full((2, 16), parallel.config.query_token_id)
    with torch.no_grad():
        full = unwrap(parallel.model)(**extend(parallel.model, inputs, queries)).logits[:, -16:, parallel.config.action_token_ids]
    ours = parallel_logits(parallel.model, inputs, parallel.config.action_token_ids, parallel.config.query_token_id, 16)
    torch.testing.assert_close(ours, full.float(), rtol=1e-4, atol=1e-4)


def _losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}


@pytest.mark.parametrize("family", NEW)
def test_finetune_reload_and_serve(family, root, capsys):
    """Every family: LoRA fine-tune from its published layout, reload the adapter and predict. Qwen2.5-VL
    (the published layout from the command line) also: dry run, resume, `vla predict`, and `vla doctor`'s
    round trip and a real `vla serve` answering as the checkpoint does."""
    from vla.cli import main as vla_main
    from vla.doctor import diagnose

    base = save_tiny_vlm(root / f"base-{family}", family)
    data = write_tiny_dataset(root / f"data-{family}", episodes=2, length=6, action_dim=3, cameras=["front"],
                              robot_type="arm")
    opts = dict(train__steps=3, train__batch_size=2, checkpoint__every=2, eval__trace_episodes=0,
                eval__max_samples=2, model__decoding="autoregressive" if family == "qwen2_5_vl" else "parallel")
    straight = root / f"straight-{family}"
    if family == "qwen2_5_vl":
        assert finetune_main(tiny_run_args(base, {"arm": data}, straight, **opts) + ["--dry-run", "--dry-run-steps", "1"]) == 0
    assert finetune_main(tiny_run_args(base, {"arm": data}, straight, **opts)) == 0
    err = capsys.readouterr().err
    qwen = family.startswith("qwen")
    assert ("vision feature cache off: the Qwen-VL vision tower takes the patches of all images" in err) == qwen
    assert "vision feature cache off" in err or "caching the frozen vision features" in err

    policy = VLAPolicy.from_pretrained(straight)  # adapter on the published-layout base
    assert policy.metadata()["backbone"] == family
    chunk = policy.predict([_img(4, (32, 32, 3))], "pick up the cube", "arm")
    assert chunk.actions.shape == (4, 3) and np.isfinite(chunk.actions).all()
    if family == "qwen2_5_vl":
        # 2 steps, then resume to 3: the same losses as 3 steps straight
        stopped = root / f"resumed-{family}"
        assert finetune_main(tiny_run_args(base, {"arm": data}, stopped, **dict(opts, train__steps=2))) == 0
        assert finetune_main(["--resume", str(stopped), "--train.steps", "3"]) == 0
        resumed, reference = _losses(stopped), _losses(straight)
        assert sorted(resumed) == [1, 2, 3]
        np.testing.assert_allclose([resumed[s] for s in (1, 2, 3)], [reference[s] for s in (1, 2, 3)], rtol=1e-5)
        frame = root / "frame.png"
        Image.fromarray(_img(4, (32, 32, 3))).save(frame)
        capsys.readouterr()
        assert vla_main(["predict", "--model", str(straight), "--image", str(frame), "--instruction", "pick up the cube",
                         "--embodiment", "arm", "--dtype", "float32", "--json"]) == 0
        np.testing.assert_allclose(json.loads(capsys.readouterr().out)["actions"], chunk.actions, atol=1e-6)
    if family == "qwen2_5_vl":
        report = diagnose(str(straight), [str(data)], replay_episodes=0, frame_episodes=0, progress=False)
        checks = report["datasets"][0]["checks"]
        assert len(checks["round_trip"]["dims"]) == 3
        assert checks["parity"]["frames"] > 0 and checks["parity"]["max_abs_diff"] <= 1e-5
