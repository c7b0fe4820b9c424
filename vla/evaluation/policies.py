"""Where evaluation actions come from: a live server (the robot's path), a checkpoint loaded
in-process, or the simulator's scripted expert (a harness sanity check and upper bound)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import CheckpointError, ConfigError, VLAError
from ..types import ActionChunk

SOURCES = ("server", "model", "expert")
ENCODINGS = ("png", "raw", "jpeg")


class EvaluationError(VLAError, RuntimeError):
    """An evaluation could not run (the message says which episode / component and why)."""


@dataclass(frozen=True)
class PolicySource:
    """Plain data (it travels to worker processes): how to reach the policy."""

    kind: str  # "server" | "model" | "expert"
    model: str | None = None  # checkpoint directory or hub id (kind "model"; with "server": provenance only)
    url: str | None = None
    token: str | None = None
    encoding: str = "png"  # image transport to the server; png/raw are lossless, jpeg is not
    device: str | None = None
    threads: int | None = None  # torch intra-op threads per process (in-process policies)
    dtype: str = "auto"  # in-process policies: vla.precision
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise ConfigError(f"unknown policy source {self.kind!r}; choose one of {SOURCES}")
        if self.kind == "server" and not self.url:
            raise ConfigError("a server policy needs a URL (--server http://HOST:PORT)")
        if self.kind == "model" and not self.model:
            raise ConfigError("an in-process policy needs a checkpoint (--model DIR)")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"unknown image encoding {self.encoding!r}; choose one of {ENCODINGS}")


class Predictor:
    """``metadata()``, ``predict(...) -> ActionChunk``, ``predict_batch([obs]) -> [ActionChunk]``, ``close()``."""

    def metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    def predict(self, images: Mapping[str, Any], instruction: str, embodiment: str, state=None) -> ActionChunk:
        raise NotImplementedError

    def predict_batch(self, observations: Sequence[dict]) -> list[ActionChunk]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ServerPredictor(Predictor):
    """The HTTP path a robot uses (vla.client.VLAClient); light: no torch in this process."""

    def __init__(self, source: PolicySource):
        from vla.client import VLAClient

        self.client = VLAClient(source.url, token=source.token, encoding=source.encoding, timeout=source.timeout_s)

    def metadata(self) -> dict[str, Any]:
        return self.client.metadata()

    def predict(self, images, instruction, embodiment, state=None) -> ActionChunk:
        return self.client.predict(images, instruction, embodiment, state)

    def predict_batch(self, observations) -> list[ActionChunk]:
        return self.client.predict_batch(list(observations))

    def close(self) -> None:
        self.client.close()


class LocalPredictor(Predictor):
    """VLAPolicy in this process."""

    def __init__(self, source: PolicySource):
        import torch

        from ..policy import VLAPolicy

        if source.threads:
            torch.set_num_threads(int(source.threads))
        self.policy = VLAPolicy.from_pretrained(source.model, device=source.device, dtype=source.dtype)

    def metadata(self) -> dict[str, Any]:
        return self.policy.metadata()

    def predict(self, images, instruction, embodiment, state=None) -> ActionChunk:
        return self.policy.predict(images, instruction, embodiment, state)

    def predict_batch(self, observations) -> list[ActionChunk]:
        from ..types import PredictRequest

        return self.policy.predict_batch([PredictRequest(o["images"], o["instruction"], o["embodiment"], o.get("state"))
                                          for o in observations])


def open_predictor(source: PolicySource) -> Predictor:
    if source.kind == "server":
        return ServerPredictor(source)
    if source.kind == "model":
        return LocalPredictor(source)
    raise ConfigError("the scripted expert is not a Predictor; it acts from the simulator state")


def config_metadata(model_dir: str | Path) -> dict[str, Any] | None:
    """The embodiment part of ``VLAPolicy.metadata()`` from vla_config.json alone (no model load);
    None when ``model_dir`` is not a local checkpoint."""
    path = Path(model_dir) / "vla_config.json"
    if not path.is_file():
        return None
    from ..configuration import VLAConfig

    cfg = VLAConfig.load(model_dir)
    return {
        "model_id": cfg.model_id or str(model_dir),
        "decoding": cfg.decoding,
        "uses_state": cfg.use_state,
        "embodiments": {
            e.name: {"action_dim": e.action_dim, "action_names": list(e.action_names), "chunk_size": e.chunk_size,
                     "control_hz": e.control_hz, "cameras": list(e.cameras),
                     "image_size": list(e.image_size) if e.image_size else None,
                     "state_dim": e.state_dim, "state_names": list(e.state_names)}
            for e in cfg.embodiments
        },
    }


def policy_metadata(source: PolicySource) -> dict[str, Any]:
    """Metadata of the policy behind ``source`` (a server answers /metadata; a local checkpoint is read)."""
    if source.kind == "server":
        pred = ServerPredictor(source)
        try:
            return pred.metadata()
        except VLAError:
            raise
        except Exception as e:  # httpx connection errors after retries
            raise EvaluationError(f"cannot reach the policy server at {source.url} ({type(e).__name__}: {e}); "
                                  "start it with `vla serve --model DIR` or fix --server") from e
        finally:
            pred.close()
    meta = config_metadata(source.model)
    if meta is not None:
        return meta
    if source.model and (str(source.model).startswith((".", "/", "~")) or Path(source.model).exists()):
        raise CheckpointError(f"--model {source.model}: no vla_config.json there; pass a VLA checkpoint directory")
    pred = LocalPredictor(source)  # a hub id: load it (it is cached for the workers)
    try:
        return json.loads(json.dumps(pred.metadata(), default=str))
    finally:
        pred.close()
