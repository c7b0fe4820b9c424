# Over 400 lines: both tokenizers' contracts, persistence, report and CLI, checked on shared fixtures.
"""Action tokenizers: binning and FAST round trips, the decoding contract, persistence, report and CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vla.action_tokenizers import (
    ActionTokenizer,
    BinningActionTokenizer,
    FastActionTokenizer,
    dct_matrix,
    format_report,
    load_action_tokenizer,
    make_action_tokenizer,
    report,
)
from vla.commands.tokenizer import report_main as tokenizer_report_main
from vla.data.synthetic import smooth_chunks
from vla.errors import CheckpointError, ConfigError, DecodingError, InvalidInputError
from vla.normalize import Normalizer, Stats


SHAPES = [(16, 7), (32, 4), (8, 2)]


@pytest.fixture(scope="module")
def fast() -> FastActionTokenizer:
    # One tokenizer for several embodiments' chunk shapes.
    train = [c for i, (h, d) in enumerate(SHAPES) for c in smooth_chunks(500, h, d, seed=i)]
    return make_action_tokenizer("fast", scale=10, vocab_size=1024).fit(train)


def random_contract_sequence(tok: ActionTokenizer, n_values: int, rng: np.random.Generator) -> list[int]:
    """What a constrained decoder may emit: any token that fits the remaining value count."""
    ids, remaining = [], n_values
    while remaining:
        allowed = np.flatnonzero(tok.allowed_tokens(remaining))
        ids.append(int(rng.choice(allowed)))
        remaining -= int(tok.token_lengths[ids[-1]])
    return ids


# --- binning ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 7, 256, 1024])
def test_bins_all_n_bins_reachable_including_endpoints(n):
    tok = BinningActionTokenizer(n)
    grid = np.linspace(-1, 1, 20 * n + 1)[:, None]
    ids = tok.encode(grid)
    assert sorted(set(ids)) == list(range(n))
    assert tok.encode([[-1.0]]) == [0] and tok.encode([[1.0]]) == [n - 1]
    assert tok.vocab_size == n and np.array_equal(tok.token_lengths, np.ones(n))
    assert len(np.unique(tok.decode(list(range(n)), n, 1))) == n


@pytest.mark.parametrize("n", [7, 256, 1024])
def test_bins_error_is_at_most_half_a_bin_and_reached_at_endpoints(n):
    tok = BinningActionTokenizer(n)
    half = 1.0 / n  # half of the bin width 2/n
    grid = np.linspace(-1, 1, 50 * n + 1)[:, None]
    err = np.abs(tok.decode(tok.encode(grid), len(grid), 1) - grid)
    assert err.max() <= half + 1e-12
    ends = np.array([[-1.0], [1.0]])
    assert np.allclose(np.abs(tok.decode(tok.encode(ends), 2, 1) - ends), half, rtol=1e-12, atol=0)


def test_bins_clip_out_of_range_values():
    tok = BinningActionTokenizer(256)
    x = np.array([[-5.0, 5.0, -1.0000001, 3.0]])
    assert tok.encode(x) == [0, 255, 0, 255]
    assert np.allclose(tok.decode(tok.encode(x), 1, 4), [[-1 + 1 / 256, 1 - 1 / 256, -1 + 1 / 256, 1 - 1 / 256]])


def test_bins_are_time_major_and_batch_matches_single():
    tok = BinningActionTokenizer(256)
    x = smooth_chunks(5, 4, 3)
    ids = tok.encode(x[0])
    assert ids == [tok.encode([[v]])[0] for v in x[0].ravel()]  # step 0 dims 0..2, then step 1, ...
    assert tok.encode_batch(x) == [tok.encode(c) for c in x]
    assert np.array_equal(tok.decode_batch(tok.encode_batch(x), 4, 3), np.stack([tok.decode(tok.encode(c), 4, 3) for c in x]))


def test_bins_malformed_ids_raise_decoding_error():
    tok = BinningActionTokenizer(256)
    with pytest.raises(DecodingError, match="out of range 0..255"):
        tok.decode([0, 256], 1, 2)
    with pytest.raises(DecodingError, match="out of range"):
        tok.decode([-1, 3], 1, 2)
    with pytest.raises(DecodingError, match="needs exactly 6"):
        tok.decode([1, 2, 3], 2, 3)
    with pytest.raises(DecodingError, match="integers"):
        tok.decode([1.5, 2.0], 1, 2)
    with pytest.raises(DecodingError, match="chunk_size"):
        tok.decode([1, 2], 0, 2)
    with pytest.raises(DecodingError, match="sequence 1: got 2 bin tokens.*needs exactly 4"):
        tok.decode_batch([[1, 2, 3, 4], [1, 2]], 2, 2)
    with pytest.raises(DecodingError, match="sequence 1: action token id 300 at position 3"):
        tok.decode_batch([[1, 2, 3, 4], [1, 2, 3, 300]], 2, 2)


def test_bad_chunks_raise_invalid_input():
    tok = BinningActionTokenizer(8)
    with pytest.raises(InvalidInputError, match="NaN"):
        tok.encode([[0.1, np.nan]])
    with pytest.raises(InvalidInputError, match=r"\(H, D\)"):
        tok.encode([0.1, 0.2])


# --- FAST ----------------------------------------------------------------------------------
def test_dct_matrix_matches_scipy():
    fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(0).normal(size=(4, 13, 3))
    assert np.allclose(np.matmul(dct_matrix(13), x), fft.dct(x, axis=1, norm="ortho"), atol=1e-12)
    assert np.allclose(dct_matrix(13).T @ dct_matrix(13), np.eye(13), atol=1e-12)


@pytest.mark.parametrize("h,d", SHAPES)
def test_fast_round_trip_error_bounded_by_rounding(fast, h, d):
    x = smooth_chunks(50, h, d, seed=99)
    rec = fast.decode_batch(fast.encode_batch(x), h, d)
    # Orthonormal DCT: the chunk's L2 error equals the coefficients' rounding error, <= 0.5/scale each.
    per_chunk_rmse = np.sqrt(np.mean((rec - x) ** 2, axis=(1, 2)))
    assert per_chunk_rmse.max() <= 0.5 / fast.scale + 1e-12
    assert np.abs(rec - x).max() <= 0.5 / fast.scale * np.sqrt(h) + 1e-12
    assert np.sqrt(np.mean((rec - x) ** 2)) < 0.03


def test_fast_decodes_exactly_the_rounded_dct_of_scipy(fast):
    fft = pytest.importorskip("scipy.fft")
    x = smooth_chunks(20, 16, 7, seed=4)
    q = np.rint(fft.dct(x, axis=1, norm="ortho") * fast.scale)
    expected = fft.idct(q / fast.scale, axis=1, norm="ortho")
    ids = fast.encode_batch(x)
    assert np.allclose(fast.decode_batch(ids, 16, 7), expected, rtol=0, atol=1e-12)
    assert np.allclose([fast.decode(i, 16, 7) for i in ids], expected, rtol=0, atol=1e-12)


def test_fast_compresses_smooth_chunks(fast):
    for h, d in SHAPES[:2]:
        n_tokens = [len(ids) for ids in fast.encode_batch(smooth_chunks(50, h, d, seed=7))]
        assert np.mean(n_tokens) < h * d / 2, (h, d, np.mean(n_tokens))


@pytest.mark.parametrize("h,d", [*SHAPES, (5, 3), (1, 1)])  # also shapes never seen in fit
def test_fast_token_lengths_sum_to_chunk_values(fast, h, d):
    x = smooth_chunks(20, h, d, seed=3)
    for chunk, ids in zip(x, fast.encode_batch(x)):
        assert ids == fast.encode(chunk)
        assert int(fast.token_lengths[ids].sum()) == h * d
        assert all(0 <= i < fast.vocab_size for i in ids)


def test_fast_vocabulary_keeps_every_symbol(fast):
    # Default max_coefficient: ceil(scale * sqrt(longest H)) = ceil(10 * sqrt(32)) = 57.
    assert fast.max_coefficient == 57 and fast.alphabet_size == 115
    assert fast.vocab_size == len(fast.token_lengths) == 1024
    assert int(np.sum(fast.token_lengths == 1)) == fast.alphabet_size
    assert fast.token_lengths.max() > 4  # merges of zero runs exist


def test_fast_default_range_never_clips_chunks_up_to_the_fitted_length(fast, recwarn):
    extreme = np.stack([np.ones((32, 4)), -np.ones((32, 4)), np.sign(np.sin(np.arange(32) * 0.7))[:, None] * np.ones((1, 4))])
    rec = fast.decode_batch(fast.encode_batch(extreme), 32, 4)
    assert np.sqrt(np.mean((rec - extreme) ** 2, axis=(1, 2))).max() <= 0.5 / fast.scale + 1e-12
    assert not recwarn.list
    with pytest.warns(UserWarning, match="clipped"):  # longer than anything fitted: the DC term clips, and it says so
        fast.encode(np.ones((64, 4)))


def test_fast_small_vocab_for_short_chunks():
    x = smooth_chunks(100, 4, 3)
    tok = make_action_tokenizer("fast", vocab_size=64).fit(x)  # alphabet 2*20+1 = 41 for H=4
    assert tok.alphabet_size == 41 and tok.vocab_size <= 64
    assert np.sqrt(np.mean((tok.decode_batch(tok.encode_batch(x), 4, 3) - x) ** 2)) <= 0.05
    ids = tok.encode_batch(x)
    with pytest.raises(ConfigError, match="vocab_size=64 is smaller than the 81"):
        tok.fit(smooth_chunks(10, 16, 3))
    assert tok.max_coefficient == 20 and tok.encode_batch(x) == ids  # a failed refit changes nothing


@pytest.mark.parametrize("kind", ["bins", "fast"])
def test_any_sequence_obeying_the_length_contract_decodes(fast, kind):
    tok = fast if kind == "fast" else BinningActionTokenizer(256)
    rng = np.random.default_rng(0)
    for h, d in [(16, 7), (4, 3), (1, 2)]:
        for _ in range(30):
            ids = random_contract_sequence(tok, h * d, rng)
            out = tok.decode(ids, h, d)
            assert out.shape == (h, d) and out.dtype == np.float64 and np.all(np.isfinite(out))


def test_fast_malformed_ids_raise_decoding_error(fast):
    ids = fast.encode(smooth_chunks(1, 16, 7)[0])
    with pytest.raises(DecodingError, match="needs exactly 112"):
        fast.decode(ids[:-1], 16, 7)
    with pytest.raises(DecodingError, match="needs exactly 112"):
        fast.decode(ids + [0], 16, 7)
    with pytest.raises(DecodingError, match="out of range 0..1023"):
        fast.decode(ids[:-1] + [1024], 16, 7)
    with pytest.raises(DecodingError, match="sequence 1.*decode to"):
        fast.decode_batch([ids, ids[:3]], 16, 7)
    with pytest.raises(DecodingError, match="sequence 1: action token id -1 at position 2"):
        fast.decode_batch([ids, ids[:2] + [-1]], 16, 7)
    assert fast.decode_batch([], 16, 7).shape == (0, 16, 7)


def test_fast_clips_values_and_coefficients():
    x = smooth_chunks(200, 16, 4, seed=1)
    tok = make_action_tokenizer("fast", vocab_size=400).fit(x)
    wide = x * 5  # normalized values beyond [-1, 1] are clipped before the DCT
    assert np.sqrt(np.mean((tok.decode(tok.encode(wide[0]), 16, 4) - np.clip(wide[0], -1, 1)) ** 2)) <= 0.05
    with pytest.warns(UserWarning, match="exceed max_coefficient=3"):
        make_action_tokenizer("fast", scale=100, max_coefficient=3, vocab_size=7).fit(x[:20])


def test_fast_unfitted_is_a_clear_error(tmp_path):
    tok = make_action_tokenizer("fast")
    for call in (lambda: tok.encode(np.zeros((2, 2))), lambda: tok.vocab_size, lambda: tok.save(tmp_path)):
        with pytest.raises(ConfigError, match="not fitted|unfitted"):
            call()


def test_fast_fit_is_deterministic():
    x = smooth_chunks(300, 16, 4, seed=5)
    a = make_action_tokenizer("fast", vocab_size=500).fit(x)
    b = make_action_tokenizer("fast", vocab_size=500).fit(x)
    assert a._bpe.to_str() == b._bpe.to_str()


# --- persistence -----------------------------------------------------------------------------
def test_save_load_round_trip(fast, tmp_path):
    x = smooth_chunks(30, 32, 4, seed=11)
    for name, tok in (("bins", BinningActionTokenizer(1000)), ("fast", fast)):
        tok.save(tmp_path / name)
        again = load_action_tokenizer(tmp_path / name)
        assert type(again) is type(tok) and again.config() == tok.config()
        assert json.loads((tmp_path / name / "action_tokenizer.json").read_text()) == tok.config()
        ids = tok.encode_batch(x)
        assert again.encode_batch(x) == ids
        assert np.array_equal(again.decode_batch(ids, 32, 4), tok.decode_batch(ids, 32, 4))
        assert np.array_equal(again.token_lengths, tok.token_lengths)
    assert sorted(p.name for p in (tmp_path / "fast").iterdir()) == ["action_tokenizer.json", "action_tokenizer_bpe.json"]


def test_load_errors(fast, tmp_path):
    with pytest.raises(CheckpointError, match="no action_tokenizer.json"):
        ActionTokenizer.load(tmp_path / "missing")
    d = tmp_path / "t"
    BinningActionTokenizer(8).save(d)
    cfg_path = d / "action_tokenizer.json"
    cfg_path.write_text(json.dumps({"format_version": 99, "kind": "bins", "bins": 8}))
    with pytest.raises(CheckpointError, match="format version 99.*upgrade"):
        load_action_tokenizer(d)
    cfg_path.write_text(json.dumps({"format_version": 1, "kind": "vq", "bins": 8}))
    with pytest.raises(CheckpointError, match="unknown action tokenizer kind 'vq'"):
        load_action_tokenizer(d)
    cfg_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_action_tokenizer(d)
    cfg_path.write_text(json.dumps({"format_version": 1, "kind": "bins", "bins": 8, "extra": 1}))
    with pytest.raises(CheckpointError, match="unknown key 'extra'"):
        load_action_tokenizer(d)

    f = tmp_path / "f"
    fast.save(f)
    bpe = f / "action_tokenizer_bpe.json"
    doctored = json.loads(bpe.read_text())
    doctored["pre_tokenizer"] = {"type": "Whitespace"}
    bpe.write_text(json.dumps(doctored))
    with pytest.raises(CheckpointError, match="pre-tokenizer"):
        load_action_tokenizer(f)
    bpe.unlink()
    with pytest.raises(CheckpointError, match="lacks its BPE file"):
        load_action_tokenizer(f)


def test_make_action_tokenizer_errors():
    with pytest.raises(ConfigError, match="Did you mean 'bins'"):
        make_action_tokenizer("bin")
    with pytest.raises(ConfigError, match="Did you mean 'vocab_size'"):
        make_action_tokenizer("fast", vocab=512)
    with pytest.raises(ConfigError, match="Did you mean 'bins'"):
        make_action_tokenizer("bins", nbins=512)
    with pytest.raises(ConfigError, match="bins must be an integer >= 2"):
        make_action_tokenizer("bins", bins=1)
    with pytest.raises(ConfigError, match="scale"):
        make_action_tokenizer("fast", scale=-1)
    with pytest.raises(ConfigError, match="raise vocab_size to at least 257"):
        make_action_tokenizer("fast", vocab_size=100, max_coefficient=128)
    with pytest.raises(ConfigError, match="max_coefficient must be None or an integer"):
        make_action_tokenizer("fast", max_coefficient=0)
    assert make_action_tokenizer("bins").vocab_size == 256


# --- report -----------------------------------------------------------------------------------
def physical_chunks(n=40, h=8, d=3, seed=0):
    return smooth_chunks(n, h, d, seed=seed) * np.array([0.5, 2.0, 10.0]) + np.array([0.0, 1.0, -3.0])


def test_report_binning_errors_are_half_a_bin_in_both_units():
    x = physical_chunks()
    stats = Stats.from_array(x.reshape(-1, 3))
    norm = Normalizer("minmax", stats)  # min and max map to exactly -1 and 1: no clipping
    r = report(BinningActionTokenizer(256), x, norm, ["x", "y", "z"])
    half_range = (stats.max - stats.min) / 2
    for j, dim in enumerate(r["dims"]):
        assert dim["name"] == "xyz"[j]
        assert dim["max_abs_normalized"] <= 1 / 256 + 1e-12
        assert dim["max_abs_normalized"] == pytest.approx(1 / 256, rel=1e-9)  # reached at the extremes
        assert dim["max_abs_physical"] == pytest.approx(half_range[j] / 256, rel=1e-9)
        assert dim["rmse_physical"] == pytest.approx(dim["rmse_normalized"] * half_range[j], rel=1e-9)
        assert dim["out_of_range_fraction"] == 0
    t = r["tokens_per_chunk"]
    assert t["mean"] == t["p50"] == t["p99"] == t["max"] == 24 and t["compression"] == 1
    assert r["speed"]["chunks_per_s"] > 0 and r["num_chunks"] == 40
    json.dumps(r)
    text = format_report(r)
    assert "overall" in text and "bins=256" in text and "\nz " in text


def test_report_fast_and_quantile_clipping():
    x = physical_chunks(n=200, h=16)
    norm = Normalizer("quantile", Stats.from_array(x.reshape(-1, 3)))
    tok = make_action_tokenizer("fast", vocab_size=600).fit(norm.normalize(x))
    r = report(tok, x, norm)
    assert r["overall"]["rmse_normalized"] <= 0.5 / 10
    assert r["tokens_per_chunk"]["compression"] > 1.5
    # q01/q99 clip ~2% of values: counted, and they dominate the physical max error.
    assert 0.01 < r["overall"]["out_of_range_fraction"] < 0.03
    assert [d["name"] for d in r["dims"]] == ["dim0", "dim1", "dim2"]
    with pytest.raises(ConfigError, match="2 action names for 3"):
        report(tok, x, norm, ["a", "b"])


# --- CLI -------------------------------------------------------------------------------------
def test_cli_bins_on_npy(tmp_path, capsys):
    path = tmp_path / "a.npy"
    np.save(path, physical_chunks())
    assert tokenizer_report_main([str(path), "--action-names", "a,b,c"]) == 0
    out = capsys.readouterr().out
    assert "bins (bins=256)" in out and "40 x (8 steps x 3 dims)" in out and "\nc " in out


def test_cli_fast_trajectory_holdout_save_and_reload(tmp_path, capsys):
    traj = smooth_chunks(1, 400, 3, seed=2)[0] * 4.0
    path = tmp_path / "traj.npz"
    np.savez(path, actions=traj, other=np.zeros(3))
    args = [str(path), "--chunk-size", "16", "--stride", "2", "--kind", "fast", "--vocab-size", "400", "--holdout", "0.25"]
    assert tokenizer_report_main([*args, "--json", "--save", str(tmp_path / "tok")]) == 0
    r = json.loads(capsys.readouterr().out)
    n = (400 - 16) // 2 + 1
    assert r["fit"] == {"chunks": n - round(n * 0.25), "in_sample": False}
    assert r["num_chunks"] == round(n * 0.25) and r["chunk_size"] == 16 and r["tokenizer"]["kind"] == "fast"
    assert tokenizer_report_main([str(path), "--chunk-size", "16", "--tokenizer", str(tmp_path / "tok")]) == 0
    assert "fast (scale=10.0" in capsys.readouterr().out


def test_cli_safetensors_and_stats(tmp_path, capsys):
    from safetensors.numpy import save_file

    x = physical_chunks().astype(np.float32)
    save_file({"actions": x}, str(tmp_path / "a.safetensors"))
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(Stats.from_array(x.reshape(-1, 3)).to_dict()))
    assert tokenizer_report_main([str(tmp_path / "a.safetensors"), "--stats", str(stats), "--bins", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer"] == {"format_version": 1, "kind": "bins", "bins": 64}


@pytest.mark.parametrize(
    "setup,extra,message",
    [
        ("missing", [], "no such file"),
        ("garbage", [], "cannot read action chunks"),
        ("pickled", [], "cannot read action chunks"),
        ("trajectory", [], "give --chunk-size"),
        ("multi", [], "pick one with --key"),
        ("ok", ["--scale", "5"], "only apply to --kind fast"),
        ("ok", ["--stats", "nope.json"], "cannot read statistics"),
        ("ok", ["--kind", "fast", "--vocab-size", "10"], "raise vocab_size to at least"),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, setup, extra, message):
    path = tmp_path / "a.npy"
    if setup == "garbage":
        path.write_bytes(b"this is not numpy")
    elif setup == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif setup == "trajectory":
        np.save(path, np.zeros((50, 3)))
    elif setup == "multi":
        path = tmp_path / "a.npz"
        np.savez(path, x=np.zeros((2, 4, 3)), y=np.zeros((2, 4, 3)))
    elif setup == "ok":
        np.save(path, physical_chunks())
    assert tokenizer_report_main([str(path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_help_and_subprocess_exit_code(tmp_path, capsys):
    assert tokenizer_report_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "vla tokenizer report" in out and "examples:" in out
    code = "import sys; from vla.commands.tokenizer import report_main as m; sys.exit(m(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.npy")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr
