"""Mixtures: weight parsing, deterministic and resumable order, DataLoader usage, embodiments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla.data.mixture import Mixture, MixtureSampler, parse_weights
from vla.data.samples import ChunkDataset, collate, embodiment_from_dataset
from vla.data.synthetic import write_synthetic
from vla.errors import ConfigError, UnknownEmbodimentError


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    a, _ = write_synthetic(d / "a", episodes=3, lengths=[6, 8, 7], seed=1)
    b, _ = write_synthetic(d / "b", episodes=2, lengths=[5, 9], action_dim=4, state_dim=0, seed=2,
                           cameras={"observation.images.front": (32, 32), "observation.images.wrist": (32, 32)})
    da = ChunkDataset(a, embodiment_from_dataset(a, "metaworld", 4))
    db = ChunkDataset(b, embodiment_from_dataset(b, "aloha", 4))
    return da, db


def test_parse_weights():
    names = ["metaworld", "aloha", "so101"]
    w = parse_weights("metaworld=0.5,aloha=0.3,so101=0.2", names)
    assert w == pytest.approx({"metaworld": 0.5, "aloha": 0.3, "so101": 0.2})
    assert parse_weights({"metaworld": 2, "aloha": 1, "so101": 1}, names)["metaworld"] == 0.5
    assert parse_weights(None, names, sizes=[10, 30, 60])["so101"] == pytest.approx(0.6)
    assert parse_weights("metaworld=1, aloha=0, so101=0", names)["aloha"] == 0
    cases = {
        "metaworld=0.5,aloha": "has no '='",
        "metaworld=abc,aloha=1,so101=1": "'abc', not a number",
        "metaworld=1,alhoa=1,so101=1": "unknown dataset/embodiment 'alhoa'. Did you mean 'aloha'",
        "metaworld=1,aloha=1": r"lack \['so101'\]",
        "metaworld=-1,aloha=1,so101=1": ">= 0",
        "metaworld=0,aloha=0,so101=0": "sum to 0",
        "metaworld=1,metaworld=2,aloha=1,so101=1": "given twice",
        "metaworld=nan,aloha=1,so101=1": "finite",
    }
    for spec, msg in cases.items():
        with pytest.raises(ConfigError, match=msg):
            parse_weights(spec, names)


def test_order_is_deterministic_weighted_and_covers_datasets(mix):
    da, db = mix
    m = Mixture([da, db], "metaworld=0.75,aloha=0.25", seed=0)
    assert m.names == ["metaworld", "aloha"] and len(m) == len(da) + len(db)
    seq = list(m.sampler(num_samples=4000))
    assert seq == list(m.sampler(num_samples=4000))  # same seed, same order
    assert seq != list(Mixture([da, db], "metaworld=0.75,aloha=0.25", seed=1).sampler(num_samples=4000))
    from_a = np.mean(np.array(seq) < len(da))
    assert abs(from_a - 0.75) < 0.03
    # each pass over a dataset is a permutation: the first len(da) draws of 'metaworld' cover it exactly once
    draws_a = [i for i in seq if i < len(da)][: len(da)]
    assert sorted(draws_a) == list(range(len(da)))
    s = m[seq[0]]
    assert s["embodiment"] in ("metaworld", "aloha") and s["actions"].shape[0] == 4


def test_sampler_resume_is_exact(mix):
    da, db = mix
    m = Mixture({"metaworld": da, "aloha": db}, "metaworld=0.6,aloha=0.4", seed=5)
    full = list(m.sampler(num_samples=3000))
    sp = m.sampler(num_samples=1234)
    first = list(sp)
    state = sp.state_dict()
    assert state["position"] == 1234
    resumed = m.sampler(num_samples=3000 - 1234)
    resumed.load_state_dict(state)
    assert first + list(resumed) == full
    # with a DataLoader (which prefetches) the loop passes what it consumed
    sp2 = m.sampler()
    it = iter(sp2)
    [next(it) for _ in range(50)]
    assert sp2.state_dict(consumed=20)["position"] == 20
    with pytest.raises(ConfigError, match="resume with the same datasets"):
        MixtureSampler([1, 2], [0.5, 0.5], seed=5).load_state_dict(state)


def test_iterable_order_matches_sampler_with_workers(mix):
    da, db = mix
    m = Mixture([da, db], "metaworld=0.5,aloha=0.5", seed=2)
    expected = list(m.sampler(num_samples=24, start=7))
    for workers in (0, 2):
        dl = torch.utils.data.DataLoader(m.iterable(batch_size=4, start=7, num_samples=24), batch_size=4,
                                         num_workers=workers, collate_fn=collate)
        got = [b for b in dl]
        positions = [p for b in got for p in b["sample_position"]]
        assert positions == list(range(7, 31)), workers
        flat = [(d, e, f) for b in got for d, e, f in zip(b["dataset"], b["episode_index"], b["frame_index"])]
        want = []
        for k in expected:
            ds_i, local = m.locate(k)
            ep, t = m.datasets[ds_i].locate(local)
            want.append((m.names[ds_i], ep, t))
        assert flat == want


def test_mixture_errors(mix):
    da, db = mix
    with pytest.raises(ConfigError, match="named"):
        Mixture([da, da])
    with pytest.raises(ConfigError, match="unknown dataset/embodiment 'so101'"):
        Mixture([da, db], "metaworld=1,aloha=1,so101=1")
    m = Mixture([da, db])
    assert m.weights["metaworld"] == pytest.approx(len(da) / len(m))  # default: proportional to size
    with pytest.raises(UnknownEmbodimentError, match="unknown embodiment 'aloha'"):
        m.check_embodiments(["metaworld", "so101"])
    with pytest.raises(TypeError, match="endless"):
        len(m.sampler())
