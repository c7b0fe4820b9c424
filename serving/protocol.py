"""Request parsing for the three wire protocols -> ``PredictRequest`` (pure functions, no server).

Images stay in their wire form here: the engine checks the embodiment, cameras, instruction and
state first, then bounds each image's cost from its headers, and decodes it only when its turn
in a forward comes (serving/engine.py).

1. Native JSON ``POST /predict``::

       {"instruction": str, "embodiment": str, "images": {camera: image}, "state": [float] | null}

   where each image is a base64 PNG/JPEG string or a raw array ``{"dtype","shape","data"}``.
   Multipart ``POST /predict``: one file part per camera (field name = camera name, or
   ``images/<camera>``), text fields ``instruction``, ``embodiment``, ``state`` (a JSON list).

2. openpi WebSocket (msgpack-numpy observation dicts, as sent by ``WebsocketClientPolicy``):

   ==========================================  =============================================
   observation key                             meaning
   ==========================================  =============================================
   ``prompt`` (or ``instruction``, ``task``)   the instruction
   ``embodiment``                              optional; defaults to the model's only one
   ``observation/<cam>``, ``images/<cam>``,    image of camera ``<cam>`` (uint8 HWC or CHW)
   ``observation/images/<cam>``,
   ``images: {<cam>: array}`` (ALOHA style)
   ``observation/state`` or ``state``          the state vector
   ``observation/joint_position`` +            DROID style: concatenated (joints, gripper)
   ``observation/gripper_position``            when no ``state`` key is given
   ==========================================  =============================================

   openpi's LIBERO names are aliased when the embodiment has no camera of that name:
   ``image`` -> the first camera, ``wrist_image`` -> the first camera whose name contains
   "wrist". Other keys (e.g. openpi's episode bookkeeping) are ignored.

3. OpenVLA ``POST /act`` (json-numpy): ``{"image": uint8 (H, W, 3), "instruction": str,
   "unnorm_key": embodiment}``; optional ``state``/``proprio``, images of further cameras under
   their camera names, ``"return_chunk": true``. ``{"encoded": "<json-numpy string>"}`` (the
   double-encoded form of OpenVLA's deploy.py) is accepted too. Any other key is refused, as on
   ``/predict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.embodiment import Embodiment
from vla.errors import InvalidInputError
from vla.types import PredictRequest, state_array

from .codecs import BadRequest, json_loads
from .schemas import MAX_CAMERAS, Observation
_OPENPI_PROMPT_KEYS = ("prompt", "instruction", "task")
_OPENPI_STATE_KEYS = ("observation/state", "state")
_OPENVLA_KEYS = frozenset({"image", "instruction", "unnorm_key", "embodiment", "state", "proprio", "return_chunk"})
_OPENPI_IGNORED_NAMES = {"joint_position", "gripper_position", "state", "cartesian_position"}


def _state(value: Any, what: str = "state") -> np.ndarray | None:
    if value is None:
        return None
    try:
        return state_array(value)
    except InvalidInputError as e:
        raise BadRequest("invalid_state", f"{what}: {e}", status=422) from None


def parse_observation(obs: Observation) -> PredictRequest:
    """A typed /predict observation -> PredictRequest with its images still in wire form."""
    raw = {str(cam): img if isinstance(img, str) else img.model_dump() for cam, img in obs.images.items()}
    return PredictRequest(images=raw, instruction=obs.instruction, embodiment=obs.embodiment, state=_state(obs.state))


def parse_predict_form(fields: dict[str, str], files: dict[str, bytes]) -> PredictRequest:
    """Multipart form parts -> PredictRequest. Files are images keyed by camera name."""
    unknown = sorted(set(fields) - {"instruction", "embodiment", "state"})
    if unknown:
        raise BadRequest("invalid_request", f"unknown form fields {unknown}; text fields: instruction, embodiment, state; "
                         "images go in file parts named after their camera")
    if not files:
        raise BadRequest("invalid_request", "no image file parts; send one file part per camera, named after the camera")
    if len(files) > MAX_CAMERAS:
        raise BadRequest("invalid_request", f"{len(files)} images; at most {MAX_CAMERAS} cameras are accepted")
    images = {}
    for name, data in files.items():
        cam = name.removeprefix("images/").removeprefix("images.")
        images[cam] = data
    state = None
    if fields.get("state") not in (None, "", "null"):
        state = _state(json_loads(fields["state"]), "form field 'state' (a JSON list)")
    if "instruction" not in fields:
        raise BadRequest("invalid_request", "missing form field 'instruction'")
    return PredictRequest(images=images, instruction=fields["instruction"], embodiment=fields.get("embodiment") or None,
                          state=state)


def _alias(name: str, emb: Embodiment, taken: set[str]) -> str:
    """Map openpi's LIBERO camera names onto the embodiment's cameras (see module doc)."""
    if name in emb.cameras:
        return name
    if name == "image" and emb.cameras[0] not in taken:
        return emb.cameras[0]
    if name == "wrist_image":
        for cam in emb.cameras:
            if "wrist" in cam and cam not in taken:
                return cam
    return name


def parse_openpi(obs: Any, embodiments: dict[str, Embodiment], embodiment_name) -> PredictRequest:
    """An openpi observation dict -> PredictRequest. ``embodiment_name`` resolves/defaults the name."""
    if not isinstance(obs, dict):
        raise BadRequest("invalid_request", f"an openpi observation must be a msgpack map, got {type(obs).__name__}")
    prompt = next((obs[k] for k in _OPENPI_PROMPT_KEYS if k in obs), None)
    if not isinstance(prompt, str):
        raise BadRequest("invalid_instruction", "the observation needs a 'prompt' string (the instruction)", status=422)
    emb = embodiments[embodiment_name(obs.get("embodiment"))]

    raw: dict[str, Any] = {}
    nested = obs.get("images", obs.get("observation/images"))
    if isinstance(nested, dict):
        raw.update({str(k): v for k, v in nested.items()})
    for key, value in obs.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.ndim < 2:
            continue
        name = key.removeprefix("observation/").removeprefix("images/")
        if "/" in name or name in _OPENPI_IGNORED_NAMES:
            continue
        raw[name] = value
    if not raw:
        raise BadRequest(
            "invalid_request",
            f"no images in the observation; send uint8 arrays under 'observation/<camera>' for cameras {emb.cameras}",
            status=422,
        )
    images: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        cam = _alias(name, emb, set(images))
        images[cam] = value

    state = None
    for key in _OPENPI_STATE_KEYS:
        if key in obs:
            state = _state(obs[key], key)
            break
    else:
        parts = {k: obs[k] for k in ("observation/joint_position", "observation/gripper_position") if k in obs}
        if parts:
            missing = [k for k, v in parts.items() if v is None]
            if missing:
                raise BadRequest("invalid_state", f"{missing} are null; send arrays of numbers", status=422)
            state = np.concatenate([_state(v, k) for k, v in parts.items()])
    return PredictRequest(images=images, instruction=prompt, embodiment=emb.name, state=state)


def parse_openvla(payload: Any, embodiments: dict[str, Embodiment], embodiment_name) -> tuple[PredictRequest, bool]:
    """An OpenVLA /act payload (json-numpy decoded) -> (PredictRequest, return_chunk)."""
    if not isinstance(payload, dict):
        raise BadRequest("invalid_request", "expected a JSON object {'image', 'instruction', 'unnorm_key'}")
    for key in ("image", "instruction"):
        if key not in payload:
            raise BadRequest("invalid_request", f"missing {key!r}; OpenVLA payload: {{'image': uint8 (H, W, 3) array, "
                             "'instruction': str, 'unnorm_key': embodiment}")
    if "unnorm_key" in payload and "embodiment" in payload:
        raise BadRequest("invalid_request", "name the embodiment once, as 'unnorm_key' or as 'embodiment', not both")
    name = payload.get("unnorm_key", payload.get("embodiment"))
    if name is not None and not isinstance(name, str):
        raise BadRequest("invalid_embodiment", f"'unnorm_key' must be a string (the embodiment), got {type(name).__name__}",
                         status=422)
    if not isinstance(payload["instruction"], str):
        raise BadRequest("invalid_instruction", "'instruction' must be a string", status=422)
    return_chunk = payload.get("return_chunk", False)
    if not isinstance(return_chunk, bool):
        raise BadRequest("invalid_request", f"'return_chunk' must be a JSON boolean (true/false), got {type(return_chunk).__name__}")
    emb = embodiments[embodiment_name(name)]
    unknown = sorted(set(payload) - _OPENVLA_KEYS - set(emb.cameras[1:]))
    if unknown:
        raise BadRequest("invalid_request", f"unknown keys {unknown}; accepted: {sorted(_OPENVLA_KEYS)} and the "
                         f"further cameras of {emb.name!r} {emb.cameras[1:]}")
    images = {emb.cameras[0]: payload["image"]}
    images.update({cam: payload[cam] for cam in emb.cameras[1:] if cam in payload})
    if "state" in payload and "proprio" in payload:
        raise BadRequest("invalid_request", "send the state once, as 'state' or as 'proprio', not both")
    state = _state(payload.get("state", payload.get("proprio")))
    return PredictRequest(images=images, instruction=payload["instruction"], embodiment=emb.name, state=state), return_chunk
