"""VLAPolicy on tiny randomly initialised VLMs of every supported family."""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vla import VLAPolicy
from vla.backbones.tiny import FAMILIES, save_tiny_vlm
from vla.configuration import FORMAT_VERSION
from vla.decoding import decode_autoregressive, decode_with_generate
from vla.errors import CheckpointError, ConfigError, InvalidInputError, UnknownEmbodimentError
from vla.testing import make_tiny_policy, tiny_embodiments
from vla.types import PredictRequest


def _img(seed, shape=(40, 50, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _requests():
    return [
        PredictRequest([_img(1)], "pick up the red cube", "sawyer"),
        PredictRequest({"observation.images.wrist": _img(2), "observation.images.top": _img(3)},
                       "transfer the cube to the other arm", "aloha"),
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def policy(request):
    return make_tiny_policy(request.param)


def test_predict_returns_physical_chunk(policy):
    chunk = policy.predict([_img(0)], "pick up the red cube", "sawyer")
    emb = policy.embodiments["sawyer"]
    assert chunk.actions.shape == (emb.chunk_size, emb.action_dim)
    assert chunk.action_names == emb.action_names and chunk.control_hz == emb.control_hz
    assert np.isfinite(chunk.actions).all()
    # every value is a bin centre mapped through the normalizer: re-normalizing lands on the bin grid,
    # except the bin holding zero, which decodes to exactly 0 (the embodiment's snap_zero)
    norm = emb.action_normalizer.normalize(chunk.actions)
    tok = policy.action_tokenizer
    grid = tok.decode(tok.encode(norm), *chunk.actions.shape)
    np.testing.assert_allclose(np.where(chunk.actions == 0, norm, grid), norm, atol=1e-9)
    assert (np.abs(grid[chunk.actions == 0]) <= tok.zero_band + 1e-9).all()
    assert 0 <= chunk.uncertainty <= np.log(tok.vocab_size) + 1e-6


def test_fast_path_matches_generate_reference(policy):
    inputs = policy.prepare(_requests()[:1])
    n = 4 * 4
    ours = decode_autoregressive(policy.model, inputs, policy.config.action_token_ids,
                                 policy.action_tokenizer.token_lengths, [n]).tokens
    assert ours == decode_with_generate(policy.model, inputs, policy.config.action_token_ids, n)


def test_batch_equals_single_across_embodiments(policy):
    reqs = _requests()
    batch = policy.predict_batch(reqs)
    for r, b in zip(reqs, batch):
        single = policy.predict(r.images, r.instruction, r.embodiment)
        np.testing.assert_array_equal(single.actions, b.actions)
    assert batch[1].actions.shape == (2, 14)


def test_save_and_reload_is_identical(policy, tmp_path):
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    again = VLAPolicy.from_pretrained(tmp_path)
    for r in _requests():
        np.testing.assert_array_equal(again.predict(r.images, r.instruction, r.embodiment).actions,
                                      policy.predict(r.images, r.instruction, r.embodiment).actions)
    assert again.metadata()["embodiments"]["aloha"]["cameras"] == ["observation.images.top", "observation.images.wrist"]


def test_camera_order_is_respected(policy):
    top, wrist = _img(5), _img(6)
    as_dict = policy.predict({"observation.images.wrist": wrist, "observation.images.top": top}, "go", "aloha")
    as_list = policy.predict([top, wrist], "go", "aloha")
    np.testing.assert_array_equal(as_dict.actions, as_list.actions)


def test_image_formats_are_equivalent(tmp_path):
    policy = make_tiny_policy("llava")
    arr = _img(7)
    Image.fromarray(arr).save(tmp_path / "a.png")
    from_bytes = policy.predict([(tmp_path / "a.png").read_bytes()], "go", "sawyer")
    from_array = policy.predict([arr], "go", "sawyer")
    from_pil = policy.predict([Image.fromarray(arr)], "go", "sawyer")
    np.testing.assert_array_equal(from_bytes.actions, from_array.actions)
    np.testing.assert_array_equal(from_pil.actions, from_array.actions)


def test_bad_inputs_name_the_problem():
    policy = make_tiny_policy("llava")
    with pytest.raises(UnknownEmbodimentError, match=r"unknown embodiment 'ur5'.*\['aloha', 'sawyer'\]"):
        policy.predict([_img(0)], "go", "ur5")
    with pytest.raises(InvalidInputError, match="needs 2 images in camera order"):
        policy.predict([_img(0)], "go", "aloha")
    with pytest.raises(InvalidInputError, match=r"needs exactly the cameras .*got \['observation.images.left'"):
        policy.predict({"observation.images.left": _img(0), "observation.images.top": _img(1)}, "go", "aloha")
    with pytest.raises(InvalidInputError, match="not a readable PNG or JPEG"):
        policy.predict([b"definitely not a png"], "go", "sawyer")
    with pytest.raises(InvalidInputError, match="must be uint8"):
        policy.predict([np.zeros((8, 8), np.float32)], "go", "sawyer")
    with pytest.raises(InvalidInputError, match="state has 3 values; embodiment 'sawyer' expects 4"):
        policy.predict([_img(0)], "go", "sawyer", state=[0.0, 1.0, 2.0])
    with pytest.raises(InvalidInputError, match="empty batch"):
        policy.predict_batch([])
    with pytest.raises(InvalidInputError, match="instruction"):
        policy.predict([_img(0)], "  ", "sawyer")


@pytest.mark.parametrize("instruction, state, code, message", [
    ("pick <image> up", None, "invalid_instruction", r"reserved token\(s\) \['<image>'\]"),
    ("\ud800 pick", None, "invalid_instruction", "not valid Unicode"),
    ("\U0001F600" * 4096, None, "instruction_too_long", r"tokens after the prompt template; the limit is \d+ \(the model's 512 positions"),
    ("go", [10**400, 0, 0, 0], "invalid_state", "too large for float64"),
    ("go", ["1", 0, 0, 0], "invalid_state", "flat list of numbers"),
    ("go", [True, 0, 0, 0], "invalid_state", "flat list of numbers"),
    ("go", [None, 0, 0, 0], "invalid_state", "flat list of numbers"),
])
def test_validate_refuses_what_would_break_or_stall_the_model(instruction, state, code, message):
    policy = make_tiny_policy("llava")
    request = PredictRequest([_img(0)], instruction, "sawyer", state)
    t0 = time.perf_counter()
    with pytest.raises(InvalidInputError, match=message) as e:
        policy.validate(request)
    assert e.value.code == code and time.perf_counter() - t0 < 2  # refused without running the model
    with pytest.raises(InvalidInputError, match=message):  # predict refuses the same way
        policy.predict_batch([request])


def test_instruction_token_limit_counts_tokens_after_the_template():
    policy = make_tiny_policy("llava")
    emb = policy.embodiments["sawyer"]
    n = policy.instruction_tokens(emb, "pick up the red cube")
    assert 0 < n <= len("pick up the red cube")
    assert policy.validate(PredictRequest([_img(0)], "pick up the red cube", "sawyer"), max_instruction_tokens=n)
    with pytest.raises(InvalidInputError, match=f"the limit is {n - 1} .*--max-instruction-tokens is {n - 1}"):
        policy.validate(PredictRequest([_img(0)], "pick up the red cube", "sawyer"), max_instruction_tokens=n - 1)


def test_state_enters_the_prompt_when_used():
    policy = make_tiny_policy("llava", use_state=True)
    a = policy.prepare([PredictRequest([_img(0)], "go", "sawyer", state=[0.0, 0.0, 0.0, 0.0])])
    b = policy.prepare([PredictRequest([_img(0)], "go", "sawyer", state=[1.0, -1.0, 0.5, 0.0])])
    assert not torch.equal(a["input_ids"], b["input_ids"])
    with pytest.raises(InvalidInputError, match="send 'state' with 4 values"):
        policy.predict([_img(0)], "go", "sawyer")


def test_parallel_decoding_one_forward():
    policy = make_tiny_policy("llava", decoding="parallel")
    chunk = policy.predict([_img(0)], "go", "sawyer")
    assert chunk.actions.shape == (4, 4)
    assert policy.processor.tokenizer.convert_ids_to_tokens(policy.config.query_token_id) == "<act_query>"


def test_reused_vocabulary_ids_mode():
    policy = make_tiny_policy("idefics3", action_token_mode="reuse")
    vocab = policy.processor.tokenizer.vocab_size
    ids = policy.config.action_token_ids
    assert len(ids) == 32 and max(ids) < vocab and "<act_0>" not in policy.processor.tokenizer.get_vocab()
    assert policy.predict([_img(0)], "go", "sawyer").actions.shape == (4, 4)


def test_fast_tokenizer_decodes_exact_value_counts():
    from vla.action_tokenizers import make_action_tokenizer
    from vla.backbones.tiny import build_tiny_vlm

    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 4)[:, None]
    fast = make_action_tokenizer("fast", vocab_size=80, max_coefficient=20)
    fast.fit([np.clip(np.sin(2 * t * rng.uniform(1, 3, (1, d)) + rng.uniform(0, 3, (1, d))), -1, 1)
              for d in (4, 14) for _ in range(50)])
    policy = VLAPolicy.from_backbone(build_tiny_vlm("llava"), tiny_embodiments(), fast)
    chunks = policy.predict_batch(_requests())
    assert [c.actions.shape for c in chunks] == [(4, 4), (2, 14)]


def test_lora_adapter_checkpoint_loads_on_its_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir = save_tiny_vlm(tmp_path / "base", "llava")
    policy = make_tiny_policy("llava")
    fresh = VLAPolicy.from_backbone(base_dir, tiny_embodiments(), policy.action_tokenizer)
    ids = fresh.config.action_token_ids
    peft_model = get_peft_model(fresh.model, LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"],
        trainable_token_indices={"embed_tokens": ids, "lm_head": ids}))
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: move every adapter weight off its init
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    fresh.model = peft_model.eval()
    expected = [fresh.predict(r.images, r.instruction, r.embodiment).actions for r in _requests()]
    fresh.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "model.safetensors").exists()
    loaded = VLAPolicy.from_pretrained(tmp_path / "run")
    for r, e in zip(_requests(), expected):
        np.testing.assert_array_equal(loaded.predict(r.images, r.instruction, r.embodiment).actions, e)
    weights = tmp_path / "run" / "adapter_model.safetensors"
    weights.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="adapter_model.safetensors is corrupt"):
        VLAPolicy.from_pretrained(tmp_path / "run")
    weights.unlink()
    with pytest.raises(CheckpointError, match="adapter_config.json but no adapter_model.safetensors"):
        VLAPolicy.from_pretrained(tmp_path / "run")


def test_checkpoint_errors(tmp_path):
    policy = make_tiny_policy("llava")
    policy.save_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="does not exist"):
        VLAPolicy.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="vla_config.json is missing"):
        VLAPolicy.from_pretrained(save_tiny_vlm(tmp_path / "plain", "llava"))
    (tmp_path / "no_weights").mkdir()
    for f in (tmp_path / "ok").iterdir():
        if f.name != "model.safetensors":
            (tmp_path / "no_weights" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="needs its model.safetensors"):
        VLAPolicy.from_pretrained(tmp_path / "no_weights")
    (tmp_path / "no_weights" / "model.safetensors").write_bytes(b"junk")  # corrupt, not missing
    with pytest.raises(CheckpointError, match="header too small.*needs its model.safetensors"):
        VLAPolicy.from_pretrained(tmp_path / "no_weights")
    cfg = json.loads((tmp_path / "ok" / "vla_config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "ok" / "vla_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="newer than this vla supports"):
        VLAPolicy.from_pretrained(tmp_path / "ok")
    cfg["format_version"] = FORMAT_VERSION
    for bad, match in (([], "holds a list, not an object"), ({**cfg, "format_version": "1"}, "is not an integer"),
                       ({k: v for k, v in cfg.items() if k != "embodiments"}, "missing .* 'embodiments'"),
                       ({**cfg, "embodiments": [{"name": "x"}]}, "not a valid VLA config .*action_names")):
        (tmp_path / "ok" / "vla_config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            VLAPolicy.from_pretrained(tmp_path / "ok")


def test_hub_id_fails_clearly_offline():
    with pytest.raises(CheckpointError, match="could not be fetched from the Hugging Face Hub"):
        VLAPolicy.from_pretrained("someone/not-a-local-dir")


def test_policy_on_the_default_backbone(small_backbone_dir, tmp_path):
    from vla.action_tokenizers import make_action_tokenizer

    options = {"num_layers": 2, "image_tokens": 16}
    policy = VLAPolicy.from_backbone("default", tiny_embodiments(), make_action_tokenizer("bins", bins=64),
                                     base_options=options)
    assert policy.config.base_model == "default" and policy.config.base_options == options
    inputs = policy.prepare([PredictRequest([_img(0, (224, 224, 3))], "pick up the cube", "sawyer")])
    assert int((inputs["input_ids"] == policy.model.config.image_token_id).sum()) == 16
    chunk = policy.predict([_img(0, (224, 224, 3))], "pick up the cube", "sawyer")
    assert chunk.actions.shape == (4, 4) and np.isfinite(chunk.actions).all()


def test_vla_predict_cli_prints_a_chunk_and_rejects_bad_input_clearly(tmp_path, capsys):
    from vla.cli import main as vla_main
    from vla.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    good, bad = tmp_path / "cam.png", tmp_path / "bad.png"
    Image.fromarray(_img(0)).save(good)
    bad.write_bytes(b"not an image")
    base = ["predict", "--model", str(ckpt), "--instruction", "pick up the red cube", "--embodiment", "sawyer"]

    assert vla_main([*base, "--image", str(good), "--state", "0.1,0.2,0.3,0.4", "--json"]) == 0
    chunk = json.loads(capsys.readouterr().out)
    emb = tiny_embodiments()[0]
    assert chunk["embodiment"] == "sawyer" and np.asarray(chunk["actions"]).shape == (emb.chunk_size, emb.action_dim)

    with pytest.raises(SystemExit) as e:  # a usage error before the model loads, not a ValueError traceback
        vla_main([*base, "--image", str(good), "--state", "a,b"])
    assert e.value.code == 2 and "expected comma-separated numbers" in capsys.readouterr().err
    assert vla_main([*base, "--image", str(bad)]) == 2
    assert "not a readable PNG or JPEG" in capsys.readouterr().err
    assert vla_main([*base, "--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_a_config_saved_before_decoding_was_recorded_keeps_autoregressive():
    from vla.configuration import VLAConfig

    saved = VLAConfig(tiny_embodiments(), action_token_ids=list(range(10, 42)), decoding="autoregressive").to_dict()
    del saved["decoding"]  # as written before the key existed
    assert VLAConfig.from_dict(saved).decoding == "autoregressive"
    assert VLAConfig().decoding is None and VLAConfig().resolved("bins").decoding == "parallel"
    assert VLAConfig().resolved("fast").decoding == "autoregressive"
    with pytest.raises(ConfigError, match="parallel decoding needs a fixed-length action tokenizer"):
        VLAConfig(decoding="parallel").resolved("fast")
