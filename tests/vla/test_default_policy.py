"""The shipped default policy: small, complete, trained on seeds that evaluation never uses, and
served by `vla serve` with no --model (a real server, a real simulator frame, in-process parity)."""

import json

import numpy as np
import pytest
from PIL import Image

from vla.client import VLAClient
from vla import VLAPolicy
from vla.defaults import default_policy_path
from vla.evaluation.closed_loop import DEFAULT_SEED_START


EXPECTED = {"sawyer": (8, 4), "so101": (8, 4), "aloha": (4, 14)}


@pytest.fixture(scope="module")
def shipped():
    return default_policy_path()


@pytest.fixture(scope="module")
def policy(shipped):
    return VLAPolicy.from_pretrained(shipped)


def test_it_is_small_and_refers_to_the_default_backbone(shipped):
    size = sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file())
    assert size < 30e6, size
    assert not (shipped / "training_state.pt").exists() and not (shipped / "model.safetensors").exists()
    config = json.loads((shipped / "vla_config.json").read_text())
    assert config["base_model"] == "default" and config["base_options"] == {"num_layers": 8, "image_tokens": 16}
    assert {e["name"] for e in config["embodiments"]} == set(EXPECTED)
    assert config["training"]["tool"] == "vla finetune"
    for ds in config["training"]["datasets"]:  # the data came from our simulators, on seeds below evaluation's
        seeds = [seed for _, seed in ds["provenance"]["episodes"]["written_task_seed"]]
        assert ds["provenance"]["generator"].startswith("vla.sim.generate") and max(seeds) < DEFAULT_SEED_START


def test_it_predicts_every_embodiment_within_its_statistics(policy, shipped):
    examples = json.loads((shipped / "examples" / "examples.json").read_text())
    assert set(examples) == set(EXPECTED)
    for name, ex in examples.items():
        images = [Image.open(shipped / "examples" / f) for f in ex["images"]]
        chunk = policy.predict(images=images, instruction=ex["instruction"], embodiment=name, state=ex.get("state"))
        assert chunk.actions.shape == EXPECTED[name]
        stats = policy.embodiments[name].action_stats
        assert np.all(chunk.actions >= np.asarray(stats.min) - 1e-5) and np.all(chunk.actions <= np.asarray(stats.max) + 1e-5)


def test_vla_serve_without_model_serves_it(policy, default_server):
    from vla.sim import make_env

    env = make_env("metaworld", task="reach-v3", cameras=["corner2"], image_size=(128, 128))
    obs = env.reset(seed=DEFAULT_SEED_START)
    client = VLAClient(default_server)  # its default image encoding is lossless: exact parity with in-process
    assert set(client.metadata()["embodiments"]) == set(EXPECTED)
    served = client.predict(obs["images"], env.instruction, "sawyer", state=obs["state"])
    local = policy.predict(images=obs["images"], instruction=env.instruction, embodiment="sawyer", state=obs["state"])
    np.testing.assert_allclose(served.actions, local.actions, atol=1e-5)
