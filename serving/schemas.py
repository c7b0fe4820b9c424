"""Typed wire schemas of the BentoML APIs (pydantic): what /docs.json and the Swagger UI show.

Types are strict: ``state`` holds JSON numbers only (no strings, booleans, NaN or overflowing
integers), an instruction is a non-empty string of at most 4096 characters, unknown fields are
refused. Images stay strings or raw-array objects here; they are decoded (with their size checked
from the header) by serving/codecs.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt

MAX_INSTRUCTION_CHARS = 4096
MAX_CAMERAS = 16
MAX_BATCH_REQUESTS = 256

# A tiny but real PNG (8x8 grey), so the examples in /docs.json can be sent as they are.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGNsaGhgwAaYsIoOWgkAMBcBkGHHl6YAAAAASUVORK5CYII="
)
EXAMPLE_OBSERVATION = {
    "instruction": "pick up the red cube",
    "embodiment": "so101",
    "images": {"observation.images.front": EXAMPLE_PNG},
}

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class RawImage(BaseModel):
    """Uncompressed pixels: ``data`` is the base64 of H*W*3 uint8 bytes in C order."""

    model_config = ConfigDict(extra="forbid")
    dtype: Literal["uint8"]
    shape: Annotated[list[StrictInt], Field(min_length=3, max_length=3, description="[H, W, 3]")]
    data: str


ImageValue = Union[
    Annotated[str, Field(description="base64 of PNG or JPEG bytes; a 'data:image/...;base64,' prefix is allowed")],
    RawImage,
]


class Observation(BaseModel):
    """One observation: an image per camera, the instruction, the embodiment and optionally its state."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_OBSERVATION})
    instruction: str = Field(min_length=1, max_length=MAX_INSTRUCTION_CHARS,
                             description="what to do, in words; limited in tokens too (see /metadata)")
    images: dict[str, ImageValue] = Field(min_length=1, max_length=MAX_CAMERAS,
                                          description="camera name -> image, for exactly the embodiment's cameras")
    embodiment: str | None = Field(None, description="robot name; may be left out when the model serves one")
    state: list[Number] | None = Field(None, description="robot state in physical units, when the model uses it")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"requests": [EXAMPLE_OBSERVATION]}})
    requests: list[Observation] = Field(min_length=1, max_length=MAX_BATCH_REQUESTS)


class Chunk(BaseModel):
    """The next H actions in physical units, and what a controller needs to execute them."""

    actions: list[list[float]] = Field(description="(H, D): H actions of D values, in physical units")
    action_names: list[str]
    embodiment: str
    control_hz: float = Field(description="the rate the actions are meant to be executed at")
    uncertainty: float | None = Field(description="mean entropy of the action-token distributions (nats)",
                                      json_schema_extra={"nullable": True})
    timings: dict[str, float] = Field(description="milliseconds: server_ms, queue_ms, batch_ms, model_ms, policy_ms")


class BatchAnswer(BaseModel):
    results: list[Chunk]


class Metadata(BaseModel):
    """What a client checks before it moves a robot: embodiments, cameras, action spaces, limits."""

    model_config = ConfigDict(extra="allow")
    model_id: str
    backbone: str
    decoding: str
    dtype: str = Field(description="what the model computes in: float32 or bfloat16")
    dtype_reason: str = Field(description="why: asked for, or what `auto` found (CPU flags, probe, GPU)")
    uses_state: bool
    embodiments: dict[str, dict[str, Any]]
    server: dict[str, Any]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a machine-readable code and what was wrong and what is accepted."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "error": "unknown_embodiment", "detail": "unknown embodiment 'ur5'; this checkpoint knows ['aloha', 'so101']. ..."}})
    error: str
    detail: str
