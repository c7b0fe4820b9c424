"""Wire codecs and request parsing: round trips, compatibility with openpi/json_numpy, refusals."""

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vla.client import codecs as encoders
from vla.serving import codecs
from vla.serving.codecs import BadRequest
from vla.serving.protocol import parse_observation, parse_openpi, parse_openvla, parse_predict_form
from vla.serving.schemas import Observation
from vla.serving.settings import ServeSettings
from vla.embodiment import Embodiment
from vla.errors import ConfigError


def _rgb(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _bytes(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------------- images
@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_lossless_image_encodings_round_trip_exactly(encoding):
    img = _rgb()
    wire = encoders.image_to_json(img, encoding)
    assert np.array_equal(codecs.decode_image(wire, 64), img)


def test_jpeg_round_trip_is_close_and_accepts_data_url_pil_and_bytes():
    img = _rgb(seed=1)
    smooth = np.repeat(np.repeat(img[::8, ::8], 8, 0), 8, 1)  # blocky image: JPEG keeps it well
    wire = "data:image/jpeg;base64," + encoders.image_to_json(Image.fromarray(smooth), "jpeg", quality=95)
    out = codecs.decode_image(wire, 64)
    assert out.shape == smooth.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 6
    png = _bytes(img, "PNG")
    assert encoders.encode_image(png, "png") == png  # already PNG: passed through untouched


def test_grayscale_and_rgba_become_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert codecs.decode_image(_bytes(gray, "PNG"), 64).shape == (8, 8, 3)
    rgba = np.dstack([_rgb(8, 8), np.full((8, 8), 255, np.uint8)])
    assert np.array_equal(codecs.decode_image(_bytes(rgba, "PNG"), 64), rgba[..., :3])
    chw = _rgb(8, 10).transpose(2, 0, 1)
    assert np.array_equal(codecs.image_from_array(chw, 64), chw.transpose(1, 2, 0))


@pytest.mark.parametrize("value, code", [
    (b"not an image", "invalid_image"),
    (b"", "invalid_image"),
    ("%%%not base64%%%", "invalid_base64"),
    (base64.b64encode(b"GIF89a....").decode(), "invalid_image"),
    ({"dtype": "float32", "shape": [2, 2, 3], "data": ""}, "invalid_image"),
    ({"dtype": "uint8", "shape": [2, 2], "data": ""}, "invalid_image"),
    ({"dtype": "uint8", "shape": [2, 2, 3], "data": base64.b64encode(b"x" * 5).decode()}, "invalid_image"),
    ({"dtype": "uint8", "shape": [2, 2, 3]}, "invalid_image"),
    (12345, "invalid_image"),
    (np.zeros((4, 4, 3), np.float32), "invalid_image"),
])
def test_bad_images_are_refused_with_a_code_and_what_is_accepted(value, code):
    with pytest.raises(BadRequest) as e:
        codecs.decode_image(value, 64, "camera 'front'")
    assert e.value.code == code and e.value.status == 400
    assert "camera 'front'" in e.value.detail


def test_truncated_png_is_a_bad_request():
    data = _bytes(_rgb(), "PNG")
    with pytest.raises(BadRequest) as e:
        codecs.decode_image(data[: len(data) // 2], 64)
    assert e.value.code == "invalid_image"


def test_oversized_image_is_refused_from_its_header_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (3000, 20)).save(buf, format="PNG")  # 20x3000 pixels, a few hundred bytes
    with pytest.raises(BadRequest) as e:
        codecs.decode_image(buf.getvalue(), 2048)
    assert e.value.status == 413 and e.value.code == "image_too_large" and "20x3000" in e.value.detail
    with pytest.raises(BadRequest) as e:
        codecs.decode_image({"dtype": "uint8", "shape": [4000, 10, 3], "data": ""}, 2048)
    assert e.value.status == 413


def test_scan_heavy_jpeg_is_refused_from_its_markers_and_normal_jpegs_pass():
    from vla.images import MAX_JPEG_SCANS, count_jpeg_scans
    from vla.testing import scan_heavy_jpeg

    bomb = scan_heavy_jpeg(64, 500)  # at 2048x2048 this decodes for many seconds
    assert count_jpeg_scans(bomb, stop_after=10**6) > 500
    with pytest.raises(BadRequest) as e:
        codecs.probe_image(bomb, 2048)
    assert e.value.status == 413 and e.value.code == "image_too_costly" and str(MAX_JPEG_SCANS) in e.value.detail
    for progressive in (False, True):
        buf = io.BytesIO()
        Image.fromarray(_rgb()).save(buf, "JPEG", progressive=progressive, quality=90)
        pending = codecs.probe_image(buf.getvalue(), 64)
        assert count_jpeg_scans(buf.getvalue()) in ((1,) if not progressive else range(2, 12))
        assert pending.pixels == _rgb().shape[0] * _rgb().shape[1] and np.asarray(pending.decode()).shape == _rgb().shape


# ---------------------------------------------------------------------- msgpack (openpi)
def test_msgpack_is_byte_compatible_with_openpi_client():
    from openpi_client import msgpack_numpy as openpi

    obs = {"observation/image": _rgb(), "observation/state": np.arange(8, dtype=np.float32), "prompt": "pick",
           "nested": {"x": np.int64(3)}}
    ours = codecs.msgpack_unpack(openpi.packb(obs))
    assert np.array_equal(ours["observation/image"], obs["observation/image"])
    assert ours["observation/state"].dtype == np.float32 and ours["prompt"] == "pick" and ours["nested"]["x"] == 3
    theirs = openpi.unpackb(encoders.msgpack_pack({"actions": np.ones((4, 7)), "meta": {"a": [1, 2]}}))
    assert theirs["actions"].shape == (4, 7) and theirs["meta"] == {"a": [1, 2]}


@pytest.mark.parametrize("frame, code", [
    (b"\xc1\xc1\xc1", "invalid_msgpack"),
    (b"\x92\x01", "invalid_msgpack"),  # truncated array
    (codecs.msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]}), "invalid_array"),
    (codecs.msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [3]}), "invalid_array"),
    (codecs.msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": [("a", "<f4")], b"shape": [1]}), "invalid_array"),
])
def test_malformed_or_unsafe_msgpack_is_refused(frame, code):
    with pytest.raises(BadRequest) as e:
        codecs.msgpack_unpack(frame)
    assert e.value.code == code


def test_msgpack_size_limit():
    with pytest.raises(BadRequest) as e:
        codecs.msgpack_unpack(b"\x00" * 100, max_bytes=10)
    assert e.value.status == 413


# ------------------------------------------------------------------- json-numpy (OpenVLA)
def test_json_numpy_is_compatible_with_the_json_numpy_package():
    json_numpy = pytest.importorskip("json_numpy")
    img = _rgb()
    payload = codecs.json_loads(json_numpy.dumps({"image": img, "instruction": "x"}), numpy=True)
    assert np.array_equal(payload["image"], img)
    action = np.linspace(-1, 1, 7)
    assert np.array_equal(json_numpy.loads(json.dumps(action, default=encoders.json_numpy_default)), action)
    assert json_numpy.loads(json.dumps(np.float32(2.5), default=encoders.json_numpy_default)) == 2.5


def test_json_numpy_refuses_object_arrays_and_bad_json():
    bad = json.dumps({"__numpy__": base64.b64encode(b"\x00" * 8).decode(), "dtype": "|O", "shape": [1]})
    with pytest.raises(BadRequest) as e:
        codecs.json_loads(bad, numpy=True)
    assert e.value.code == "invalid_array"
    with pytest.raises(BadRequest) as e:
        codecs.json_loads(b'{"a": ')
    assert e.value.code == "invalid_json"
    with pytest.raises(BadRequest):
        codecs.json_loads(b"[" * 100000)  # deep nesting -> RecursionError -> 400


# ----------------------------------------------------------------------------- parsing
EMBS = {
    "arm": Embodiment("arm", ["dx", "dy", "dz", "grip"], 10, 4, cameras=["front", "wrist_cam"],
                      state_names=["a", "b", "c"]),
}


def _name(n):
    return n or "arm"


def _decoded(req) -> dict:
    """What the engine decodes when the request's forward comes."""
    return {cam: codecs.probe_image(img, 64).decode() for cam, img in req.images.items()}


def test_predict_json_and_form_give_the_same_request():
    img = _rgb()
    req = parse_observation(Observation.model_validate(
        {"instruction": "go", "embodiment": "arm", "state": [1, 2, 3],
         "images": {"front": encoders.image_to_json(img, "png"), "wrist_cam": encoders.image_to_json(img, "raw")}}))
    form = parse_predict_form({"instruction": "go", "embodiment": "arm", "state": "[1, 2, 3]"},
                              {"front": _bytes(img, "PNG"), "images/wrist_cam": _bytes(img, "PNG")})
    for r in (req, form):
        assert r.instruction == "go" and r.embodiment == "arm" and r.state.tolist() == [1, 2, 3]
        assert set(r.images) == {"front", "wrist_cam"} and np.array_equal(_decoded(r)["wrist_cam"], img)


@pytest.mark.parametrize("body, field, needle", [
    ({"instruction": "x"}, "images", "Field required"),
    ({"instruction": "x", "images": {}}, "images", "at least 1 item"),
    ({"instruction": "x", "images": {"a": "x"}, "extra": 1}, "extra", "Extra inputs are not permitted"),
    ({"instruction": "x", "images": {"a": "x"}, "state": ["1"]}, "state", "valid number"),
    ({"instruction": "", "images": {"a": "x"}}, "instruction", "at least 1 character"),
])
def test_observation_schema_errors_name_the_field(body, field, needle):
    from pydantic import ValidationError

    from vla.serving.errors import pydantic_error_body

    with pytest.raises(ValidationError) as e:
        Observation.model_validate(body)
    status, shaped = pydantic_error_body(e.value.errors())
    assert shaped["detail"].startswith(field) and needle in shaped["detail"] and 400 <= status < 500


def test_json_numpy_shape_that_overflows_is_refused():
    with pytest.raises(BadRequest, match="do not match shape"):
        codecs.json_loads('{"a": {"__numpy__": "AAAA", "dtype": "|u1", "shape": [100000000000000000000, 1]}}', numpy=True)


def test_openpi_libero_keys_map_onto_cameras_and_state():
    img, wrist = _rgb(seed=1), _rgb(seed=2)
    obs = {"observation/image": img, "observation/wrist_image": wrist,
           "observation/state": np.arange(3, dtype=np.float32), "prompt": "pick it"}
    req = parse_openpi(obs, EMBS, _name)
    assert req.instruction == "pick it" and req.embodiment == "arm" and req.state.tolist() == [0, 1, 2]
    assert np.array_equal(_decoded(req)["front"], img) and np.array_equal(_decoded(req)["wrist_cam"], wrist)


def test_openpi_aloha_nested_chw_images_and_droid_state():
    img = _rgb(8, 10)
    obs = {"images": {"front": img.transpose(2, 0, 1), "wrist_cam": img}, "prompt": "x",
           "observation/joint_position": np.array([1.0, 2.0]), "observation/gripper_position": np.array([3.0])}
    req = parse_openpi(obs, EMBS, _name)
    assert np.array_equal(_decoded(req)["front"], img) and req.state.tolist() == [1, 2, 3]
    with pytest.raises(BadRequest) as e:
        parse_openpi({"observation/image": img}, EMBS, _name)
    assert "prompt" in e.value.detail


def test_openvla_payload():
    img = _rgb()
    req, chunk = parse_openvla({"image": img, "instruction": "x", "unnorm_key": "arm", "wrist_cam": img,
                                "return_chunk": True}, EMBS, _name)
    assert set(req.images) == {"front", "wrist_cam"} and chunk
    with pytest.raises(BadRequest) as e:
        parse_openvla({"instruction": "x"}, EMBS, _name)
    assert "'image'" in e.value.detail


# ---------------------------------------------------------------------------- settings
def test_settings_env_round_trip_and_validation():
    s = ServeSettings(model="/m", workers=2, max_batch_size=1, token="t", max_body_mb=0.5)
    assert ServeSettings.from_env(s.to_env()) == s
    assert s.max_body_bytes == 512 * 1024
    with pytest.raises(ConfigError):
        ServeSettings(workers=0)
    with pytest.raises(ConfigError):
        ServeSettings.from_env({"VLA_WORKERS": "many"})


def test_client_does_not_import_torch_or_the_policy():
    # vla.client (client, executor, encoders) runs on the robot; vla.serving re-exports it
    code = ("import sys, vla.client, vla.client.codecs, vla.serving;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'bentoml')"
            " or m == 'vla.policy'); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
