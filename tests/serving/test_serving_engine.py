"""Engine in-process with a real tiny policy: the batcher merges concurrent requests correctly."""

import asyncio

import numpy as np
import pytest

from vla.serving.codecs import BadRequest
from vla.serving.engine import Engine
from vla.serving.settings import ServeSettings
from vla.errors import InvalidInputError, UnknownEmbodimentError
from vla.types import PredictRequest

CAM = "observation.images.corner"


@pytest.fixture(scope="module")
def policy():
    from vla.testing import make_tiny_policy

    return make_tiny_policy("llava", decoding="parallel")


def _req(seed, embodiment="sawyer"):
    img = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    if embodiment == "aloha":
        return PredictRequest({"observation.images.top": img, "observation.images.wrist": img}, "hand over", "aloha")
    return PredictRequest({CAM: img}, f"pick up cube {seed}", embodiment)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(policy):
    engine = Engine(policy, ServeSettings(max_batch_size=8))
    reqs = [_req(i, "aloha" if i % 4 == 3 else "sawyer") for i in range(24)]
    expected = [policy.predict(r.images, r.instruction, r.embodiment).actions for r in reqs]
    calls0 = engine.metrics["calls"]._value.get()

    async def main():
        return await asyncio.gather(*(engine.predict(engine.check(r)) for r in reqs))

    results = asyncio.run(main())
    for res, exp, req in zip(results, expected, reqs):
        assert res.chunk.embodiment == req.embodiment
        np.testing.assert_allclose(res.chunk.actions, exp, atol=1e-6)
    assert max(r.batch_size for r in results) > 1  # mixed embodiments were split into groups
    assert engine.metrics["calls"]._value.get() - calls0 < len(reqs)


def test_check_rejects_before_batching(policy):
    engine = Engine(policy, ServeSettings())
    with pytest.raises(UnknownEmbodimentError):
        engine.check(_req(0, "spot"))
    bad = _req(0)
    bad.images = {"front": bad.images[CAM]}
    with pytest.raises(InvalidInputError, match="needs exactly the cameras"):
        engine.check(bad)
    with pytest.raises(InvalidInputError, match="state has 2 values"):
        engine.check(PredictRequest(_req(0).images, "x", "sawyer", state=[1, 2]))
    with pytest.raises(BadRequest, match="several embodiments"):
        engine.check(PredictRequest(_req(0).images, "x", None))


def test_a_request_past_its_deadline_is_answered_503_and_not_run(policy):
    engine = Engine(policy, ServeSettings(max_batch_size=1, max_latency_ms=1))
    calls0 = engine.metrics["calls"]._value.get()

    async def main():
        return await asyncio.gather(*(engine.predict(engine.check(_req(i))) for i in range(20)),
                                    return_exceptions=True)

    out = asyncio.run(main())
    late = [r for r in out if isinstance(r, BadRequest)]
    assert late and all(r.status == 503 and r.code == "overloaded" for r in late)
    assert engine.metrics["calls"]._value.get() - calls0 == len(out) - len(late)


def test_images_decode_in_their_forward_and_a_corrupt_one_fails_only_its_request(policy):
    import io

    from PIL import Image

    engine = Engine(policy, ServeSettings(max_batch_size=8))
    buf = io.BytesIO()
    Image.fromarray(_req(0).images[CAM]).save(buf, "PNG")
    good = [engine.check(PredictRequest({CAM: buf.getvalue()}, "pick", "sawyer")) for _ in range(2)]
    bad = engine.check(PredictRequest({CAM: buf.getvalue()[:-40]}, "pick", "sawyer"))  # the header is intact
    assert good[0].images[CAM].pixels == 32 * 32  # checked, not decoded yet

    async def main():
        return await asyncio.gather(engine.predict(good[0]), engine.predict(bad), engine.predict(good[1]),
                                    return_exceptions=True)

    first, failed, again = asyncio.run(main())
    assert isinstance(failed, BadRequest) and failed.code == "invalid_image", failed
    np.testing.assert_allclose(first.chunk.actions, again.chunk.actions)


def test_one_predict_validates_once_and_tokenizes_the_instruction_once(policy, monkeypatch):
    """A served request is checked at the edge (Engine.check) and trusted after. A new instruction is tokenized
    to count it (before any image is decoded) and for the prompt; a repeated one, as a robot sends with every
    chunk, only for the prompt."""
    engine = Engine(policy, ServeSettings(max_batch_size=1))
    asyncio.run(engine.predict(engine.check(_req(0))))  # warm the per-embodiment caches (template, room)
    tokenizer = type(policy.processor.tokenizer)
    calls, validations = [], []
    real_call, real_validate = tokenizer.__call__, type(policy).validate

    def counting_call(self, text=None, *args, **kwargs):
        calls.append(text)
        return real_call(self, text, *args, **kwargs)

    def counting_validate(self, *args, **kwargs):
        validations.append(args[0])
        return real_validate(self, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "__call__", counting_call)
    monkeypatch.setattr(type(policy), "validate", counting_validate)
    result = asyncio.run(engine.predict(engine.check(_req(99))))  # an instruction no other test sent
    assert result.chunk.actions.shape == (4, 4)
    assert len(validations) == 1
    # a new instruction: one call counts its tokens, one builds the model's prompt
    assert len(calls) == 2 and all("pick up cube 99" in str(text) for text in calls), calls
    calls.clear()
    asyncio.run(engine.predict(engine.check(_req(99))))  # the same instruction again: its count is remembered
    assert len(validations) == 2 and len(calls) == 1 and "pick up cube 99" in str(calls[0]), calls
