import numpy as np
import pytest

from vla.action_codec import ActionCodec
from vla.embodiment import Embodiment
from vla.normalize import Normalizer, Stats
from vla.errors import ConfigError, InvalidInputError, MissingStatisticsError


def _stats(rng, d=3):
    return Stats.from_array(rng.normal(size=(500, d)) * [1.0, 5.0, 0.1])


@pytest.mark.parametrize("mode", ["auto", "quantile", "meanstd", "minmax"])
def test_normalizer_inverse_is_exact_inside_range(mode):
    rng = np.random.default_rng(0)
    stats = _stats(rng)
    norm = Normalizer(mode, stats)
    x = rng.normal(size=(50, 3)) * [1.0, 5.0, 0.1] * 0.3  # well inside q01..q99
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x)), x, atol=1e-12)


def test_quantile_maps_q01_q99_to_unit_range_and_clips():
    stats = Stats.from_array(np.linspace(0, 100, 10001)[:, None])
    norm = Normalizer("quantile", stats)
    np.testing.assert_allclose(norm.normalize(np.array([[1.0], [99.0]])), [[-1.0], [1.0]], atol=1e-9)
    assert norm.normalize(np.array([[500.0]]))[0, 0] == 1.0
    assert norm.normalize(np.array([[-500.0]]))[0, 0] == -1.0


def test_masked_dims_pass_through_unchanged():
    rng = np.random.default_rng(1)
    norm = Normalizer("quantile", _stats(rng), mask=np.array([True, True, False]))
    x = np.array([[0.3, 2.0, 1.0]])
    y = norm.normalize(x)
    assert y[0, 2] == 1.0 and y[0, 0] != 0.3


def test_missing_statistics_fail_loudly_instead_of_identity():
    emb = Embodiment("arm", ["x", "y"], control_hz=10, chunk_size=4, cameras=["cam"])
    with pytest.raises(MissingStatisticsError, match="no statistics for the actions of embodiment 'arm'"):
        emb.action_normalizer.normalize(np.zeros((1, 2)))


def test_embodiment_round_trip_and_bad_keys():
    rng = np.random.default_rng(2)
    emb = Embodiment("arm", ["x", "y", "g"], 15.0, 8, ["cam0", "wrist"], state_names=["a"],
                     unnormalized=[False, False, True], action_stats=_stats(rng), image_size=(224, 224))
    again = Embodiment.from_dict(emb.to_dict())
    assert again.to_dict() == emb.to_dict()
    assert again.action_dim == 3 and again.state_dim == 1
    bad = emb.to_dict() | {"chunk_sise": 3}
    with pytest.raises(ConfigError, match="Did you mean 'chunk_size'"):
        Embodiment.from_dict(bad)


def test_inconsistent_embodiment_is_rejected():
    rng = np.random.default_rng(3)
    with pytest.raises(ConfigError, match="action statistics have 3 dims, actions have 2"):
        Embodiment("arm", ["x", "y"], 10, 4, ["cam"], action_stats=_stats(rng))
    with pytest.raises(ConfigError, match="needs at least one camera"):
        Embodiment("arm", ["x"], 10, 4, [])
    with pytest.raises(ConfigError, match="NaN"):
        Stats.from_dict({k: [float("nan")] for k in ("mean", "std", "min", "max", "q01", "q99")})


def test_displacement_chunks_encode_the_mean_displacement_and_invert():
    rng = np.random.default_rng(4)
    moves = rng.uniform(-1, 1, size=(500, 3))
    emb = Embodiment("arm", ["delta_x", "delta_y", "grip"], 10, 8, ["cam"], action_stats=Stats.from_array(moves),
                     displacement=[True, True, False])
    plain = Embodiment("arm", ["delta_x", "delta_y", "grip"], 10, 8, ["cam"], action_stats=Stats.from_array(moves))
    chunk = rng.uniform(-0.9, 0.9, size=(8, 3))
    encoded = ActionCodec(emb).normalize(chunk)
    steps = np.arange(1, 9)[:, None]
    np.testing.assert_allclose(encoded[:, :2], ActionCodec(plain).normalize(np.cumsum(chunk, 0) / steps)[:, :2])
    np.testing.assert_array_equal(encoded[:, 2], ActionCodec(plain).normalize(chunk)[:, 2])  # the gripper is per step
    np.testing.assert_allclose(ActionCodec(emb).unnormalize(encoded), chunk, atol=1e-12)
    # Through 256 bins the target's position after t steps is off by at most t half-bins of the mean.
    from vla.action_tokenizers.binning import BinningActionTokenizer

    bins = BinningActionTokenizer(256)
    decoded = ActionCodec(emb).unnormalize(bins.decode(bins.encode(encoded), 8, 3))
    half_range = (moves.max(0) - moves.min(0))[:2] / 2  # >= the q01..q99 half range the bins span
    position_error = np.abs(np.cumsum(decoded - chunk, 0))[:, :2]
    assert np.all(position_error <= steps * half_range / 256 + 1e-9)
    assert Embodiment.from_dict(emb.to_dict()).displacement == [True, True, False]
    with pytest.raises(ConfigError, match="'displacement' has 2 entries for 3 action dims"):
        Embodiment("arm", ["delta_x", "delta_y", "grip"], 10, 8, ["cam"], displacement=[True, True])
    # A batch of chunks encodes chunk by chunk; a single step is not a chunk and says so.
    batch = np.stack([chunk, chunk[::-1]])
    np.testing.assert_allclose(ActionCodec(emb).normalize(batch), np.stack([encoded, ActionCodec(emb).normalize(chunk[::-1])]))
    with pytest.raises(InvalidInputError, match=r"expected \(H, 3\) actions, got shape \(3,\)"):
        ActionCodec(emb).normalize(chunk[0])


def test_auto_covers_the_range_of_poses_and_clips_spikes():
    rng = np.random.default_rng(5)
    # dim 0: joint targets whose last 3% reach 0.2 past q99 (real poses); dim 1: rare 20x spikes
    joints = np.concatenate([rng.uniform(-1, 1, 970), np.linspace(1.0, 1.2, 30)])
    spikes = np.concatenate([rng.uniform(-1, 1, 995), np.full(5, 20.0)])
    stats = Stats.from_array(np.stack([joints, spikes], 1))
    x = np.array([[1.2, 20.0]])
    auto, quantile = Normalizer("auto", stats), Normalizer("quantile", stats)
    np.testing.assert_allclose(auto.unnormalize(auto.normalize(x))[0, 0], 1.2, atol=1e-12)  # kept
    assert quantile.unnormalize(quantile.normalize(x))[0, 0] < 1.19  # quantile clipping cuts the pose
    assert auto.normalize(x)[0, 1] == 1.0  # the spike is clipped, so the bins keep their resolution
    assert auto.normalize(np.array([[0.0, 1.0]]))[0, 1] > 0.9


def test_snap_zero_decodes_the_cell_holding_zero_to_exactly_zero():
    from vla.action_tokenizers.binning import BinningActionTokenizer

    rng = np.random.default_rng(6)
    moves = Stats.from_array(np.concatenate([rng.uniform(-1, 1, (500, 2)), [[-1, -1], [1, 0.4]]]))
    bins = BinningActionTokenizer(256)
    emb = Embodiment("arm", ["delta_x", "delta_z"], 10, 4, ["cam"], action_stats=moves)
    hold = np.zeros((4, 2))
    codec = ActionCodec(emb, bins)
    ids = codec.encode(hold)
    assert np.all(codec.decode(ids) == 0.0)
    assert np.all(ActionCodec(emb).unnormalize(bins.decode(ids, 4, 2)) != 0.0)  # a bin centre alone is never 0
    move = np.full((4, 2), 0.3)
    np.testing.assert_allclose(codec.decode(codec.encode(move)), move, atol=2 / 256)
    decoded, clipped = codec.round_trip(np.concatenate([hold, move, hold[:1]]))  # 9 steps: 3 chunks, the last padded
    assert decoded.shape == (9, 2) and not clipped.any() and np.all(decoded[[0, 1, 2, 3, 8]] == 0.0)
    # Checkpoints saved before snap_zero and auto existed decode as they were trained.
    old = emb.to_dict() | {"normalization": "quantile"}
    del old["snap_zero"]
    restored = Embodiment.from_dict(old)
    assert restored.snap_zero is False and restored.normalization == "quantile"
    assert np.all(ActionCodec(restored, bins).decode(ids) != 0.0)


def test_snap_zero_leaves_dimensions_whose_range_excludes_zero_alone():
    from vla.action_tokenizers.binning import BinningActionTokenizer

    # a joint that never reaches 0 (ALOHA's shoulder: -1.7..-0.12): its top bin must not decode to 0
    joint = Stats.from_array(np.linspace(-1.713, -0.1231, 500)[:, None])
    emb = Embodiment("arm", ["shoulder"], 10, 2, ["cam"], action_stats=joint)
    bins = BinningActionTokenizer(256)
    top = np.full((2, 1), -0.125)
    codec = ActionCodec(emb, bins)
    decoded = codec.decode(codec.encode(top))
    np.testing.assert_allclose(decoded, top, atol=1.6 / 256)
