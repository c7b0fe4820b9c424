"""Training samples (action chunks with padding and mask), embodiments from datasets, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla.action_codec import ActionCodec
from vla.data.augment import Augment
from vla.data.lerobot import LeRobotDataset
from vla.data.samples import ChunkDataset, collate, embodiment_from_dataset, split_episodes
from vla.data.synthetic import smooth_frames, write_synthetic
from vla.errors import ConfigError, DatasetError

G1 = Path(__file__).resolve().parents[2] / "fixtures" / "lerobot_v21_g1_real"
CAMS = {"observation.images.top": (32, 48), "observation.images.wrist": (32, 32)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("s") / "ds", episodes=4, lengths=[3, 8, 10, 6], cameras=CAMS)


def test_embodiment_from_dataset(synth):
    root, eps = synth
    emb = embodiment_from_dataset(root, "synth", chunk_size=4, cameras=["observation.images.wrist", "observation.images.top"])
    assert emb.action_names == ["a0", "a1", "a2"] and emb.state_names == ["s0", "s1"] and emb.control_hz == 10
    assert emb.cameras == ["observation.images.wrist", "observation.images.top"] and emb.image_size == (32, 32)
    acts = np.concatenate([e["actions"] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(emb.action_stats.q01, np.quantile(acts, 0.01, axis=0), rtol=1e-6)
    # the normalizer the policy will use works with these statistics
    y = emb.action_normalizer.normalize(acts)
    assert y.min() >= -1 and y.max() <= 1
    with pytest.raises(ConfigError, match="cameras .*'observation.images.side'.* are not in"):
        embodiment_from_dataset(root, "synth", 4, cameras=["observation.images.side"])


def test_chunks_are_padded_and_masked(synth):
    root, eps = synth
    emb = embodiment_from_dataset(root, "synth", chunk_size=4, cameras=["observation.images.wrist", "observation.images.top"])
    ds = ChunkDataset(root, emb)
    # episode 0 (3 frames) is shorter than the chunk: excluded and reported, not silently dropped
    assert ds.report.excluded == {"shorter than the chunk size 4": [0]} and ds.episodes == [1, 2, 3]
    assert len(ds) == 8 + 10 + 6 and "excluded 1" in str(ds.report)
    k = len(ds) - 2  # episode 3, frame 4 of 6: two real actions, two padded
    s = ds[k]
    assert (s["episode_index"], s["frame_index"], s["dataset"], s["embodiment"]) == (3, 4, "synth", "synth")
    ref = eps[3]["actions"]
    np.testing.assert_array_equal(s["actions"][:2], ref[4:6])
    np.testing.assert_array_equal(s["actions"][2:], np.stack([ref[5], ref[5]]))  # last action repeated
    np.testing.assert_array_equal(s["action_mask"], [True, True, False, False])
    assert s["actions"].dtype == np.float32 and s["state"].dtype == np.float32
    np.testing.assert_array_equal(s["state"], eps[3]["states"][4])
    assert s["instruction"] == eps[3]["task"]
    assert [im.shape for im in s["images"]] == [(32, 32, 3), (32, 48, 3)]  # the embodiment's camera order
    ref_img = eps[3]["images"]["observation.images.top"][4]
    assert np.abs(s["images"][1].astype(float) - ref_img).mean() < 8
    full = ds[ds.offsets[0] + 0]
    assert full["action_mask"].all() and full["frame_index"] == 0
    # short_episodes="pad" keeps the short episode; "error" names it and the fix
    padded = ChunkDataset(root, emb, short_episodes="pad")
    s0 = padded[2]
    assert s0["episode_index"] == 0 and s0["action_mask"].tolist() == [True, False, False, False]
    with pytest.raises(DatasetError, match="episode 0 .* has 3 frames, fewer than the chunk size 4.*short_episodes='pad'"):
        ChunkDataset(root, emb, short_episodes="error")


def test_locate_and_action_chunk_agree_with_getitem(synth):
    root, eps = synth
    emb = embodiment_from_dataset(root, "synth", chunk_size=4)
    ds = ChunkDataset(root, emb)
    for k in (0, 7, 8, len(ds) - 2, len(ds) - 1):
        s = ds[k]
        assert ds.locate(k) == (s["episode_index"], s["frame_index"])
        actions, mask = ds.action_chunk(k)
        np.testing.assert_array_equal(actions, s["actions"])
        np.testing.assert_array_equal(mask, s["action_mask"])
    assert ds.locate(-1) == ds.locate(len(ds) - 1) == (3, 5)  # negative indices count from the end, like ds[-1]
    with pytest.raises(IndexError, match="out of range"):
        ds.locate(len(ds))
    with pytest.raises(IndexError, match="out of range"):
        ds.action_chunk(-len(ds) - 1)


def test_action_chunks_for_tokenizers_are_the_training_chunks(synth):
    from vla.data.mixture import Mixture
    from vla.finetune.data import TrainingData, action_chunks

    root, _ = synth
    emb = embodiment_from_dataset(root, "synth", chunk_size=4)
    other = embodiment_from_dataset(root, "other", chunk_size=2)
    a, b = ChunkDataset(root, emb, name="a"), ChunkDataset(root, other, name="b")
    data = TrainingData(Mixture([a, b]), {}, {}, [])
    every = action_chunks(data, 10_000, normalized=False)
    assert len(every) == len(a) + len(b)
    np.testing.assert_array_equal(every[len(a) - 1], a[len(a) - 1]["actions"])  # padded past the episode end
    np.testing.assert_array_equal(every[len(a)], b[0]["actions"])
    only_b = action_chunks(data, 10_000, embodiment="other")
    assert len(only_b) == len(b)
    np.testing.assert_allclose(only_b[3], ActionCodec(other).normalize(b[3]["actions"]))
    few = action_chunks(data, 5, embodiment="synth", normalized=False)  # evenly spaced, first and last kept
    assert len(few) == 5
    np.testing.assert_array_equal(few[0], a[0]["actions"])
    np.testing.assert_array_equal(few[-1], a[len(a) - 1]["actions"])


def test_dataloader_with_workers(synth):
    root, _ = synth
    emb = embodiment_from_dataset(root, "synth", chunk_size=4)
    ds = ChunkDataset(root, emb)
    ds[0]  # decoders opened in the parent must not hang forked workers
    dl = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=2, collate_fn=collate)
    batches = list(dl)
    assert sum(len(b["instruction"]) for b in batches) == len(ds)
    b = batches[0]
    assert b["actions"].shape == (6, 4, 3) and b["action_mask"].dtype == torch.bool
    assert b["state"].shape == (6, 2) and len(b["images"]) == 6
    np.testing.assert_array_equal(b["actions"][1].numpy(), ds[1]["actions"])


def test_g1_samples_and_stats():
    ds = LeRobotDataset(G1)
    # metadata has no q01/q99 and 99 episodes lack files: the error names the missing file ...
    with pytest.raises(DatasetError, match="episode_000000.parquet is missing"):
        embodiment_from_dataset(ds, "g1", chunk_size=8)
    # ... and restricting to the episodes present computes them by streaming
    emb = embodiment_from_dataset(ds, "g1", chunk_size=8, episodes=ds.available_episodes())
    acts = ds.episode(1).actions.astype(np.float64)
    np.testing.assert_allclose(emb.action_stats.q99, np.quantile(acts, 0.99, axis=0), rtol=1e-6)
    assert emb.action_stats.count == 393 and emb.image_size == (480, 640)
    with pytest.raises(DatasetError, match="missing file"):
        ChunkDataset(ds, emb)
    cd = ChunkDataset(ds, emb, on_bad_episode="exclude")
    assert cd.report.excluded == {"missing files": [e for e in range(100) if e != 1]}
    assert len(cd) == 393 and cd.report.episodes_used == 1
    s = cd[392]
    assert s["images"][0].shape == (480, 640, 3) and s["action_mask"].sum() == 1
    assert s["instruction"] == "Pick up the yellow bottle on the table."


def test_split_by_episode_is_deterministic():
    train, val = split_episodes(range(20), 0.2, seed=3, name="aloha")
    assert len(val) == 4 and sorted(train + val) == list(range(20)) and not set(train) & set(val)
    assert split_episodes(list(reversed(range(20))), 0.2, seed=3, name="aloha") == (train, val)
    assert split_episodes(range(20), 0.2, seed=4, name="aloha")[1] != val
    assert split_episodes(range(5), 0.0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ConfigError, match="cannot split 1 episode"):
        split_episodes([7], 0.1)


def test_augmentation_is_seeded_and_off_at_eval():
    imgs = [smooth_frames(1, 32, 48, seed=1)[0], smooth_frames(1, 32, 32, seed=2)[0]]
    aug = Augment(seed=0)
    a, b = aug(imgs, key=(0, 5)), aug(imgs, key=(0, 5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same key, same result
    c = aug(imgs, key=(1, 5))
    assert not np.array_equal(a[0], c[0])  # another epoch, another augmentation
    assert [x.shape for x in a] == [(32, 48, 3), (32, 32, 3)] and a[0].dtype == np.uint8
    diff = np.abs(a[0].astype(float) - imgs[0]).mean()
    assert 1 < diff < 80  # it changes the image, mildly
    assert Augment(seed=1)(imgs, key=(0, 5))[0].tolist() != a[0].tolist()
    aug.eval()
    assert aug(imgs, key=(0, 5)) is imgs
    with pytest.raises(ConfigError, match="crop_scale"):
        Augment(crop_scale=(0.0, 1.0))


def test_augmented_samples_deterministic_across_workers(synth):
    root, _ = synth
    emb = embodiment_from_dataset(root, "synth", chunk_size=4)
    ds = ChunkDataset(root, emb, augment=Augment(seed=7))
    direct = [ds[i]["images"][0] for i in range(4)]
    dl = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(4)), batch_size=2, num_workers=2, collate_fn=collate)
    via_workers = [im[0] for b in dl for im in b["images"]]
    assert all(np.array_equal(x, y) for x, y in zip(direct, via_workers))
    ds.eval()
    plain = ChunkDataset(root, emb)
    assert np.array_equal(ds[0]["images"][0], plain[0]["images"][0])
