"""The BentoML service: ``bentoml serve serving.service:VLAService`` (or ``vla serve``).

Each worker process loads the policy once (``VLA_MODEL_DIR``, see serving/settings.py) and owns
one Engine; the routes (serving/routes.py) are mounted at ``/`` next to BentoML's own
/healthz /livez /readyz /metrics. Auth and the body limit are an ASGI middleware (serving/guard.py).
"""

from __future__ import annotations

import logging

import bentoml

from .engine import Engine
from .guard import GuardMiddleware
from .routes import build_app
from .settings import ServeSettings, default_model

log = logging.getLogger("vla.serving")
SETTINGS = ServeSettings.from_env()  # read at import: BentoML sizes workers/threads from the decorator


def _engine() -> Engine:
    service = bentoml.get_current_service()
    if service is None:
        raise RuntimeError("the VLA service is not initialised yet")
    return service.engine


@bentoml.service(
    name="vla",
    workers=SETTINGS.workers,
    threads=SETTINGS.threads,
    traffic={"timeout": SETTINGS.timeout_s},
)
@bentoml.asgi_app(build_app(_engine), path="/")
class VLAService:
    """A VLA policy behind HTTP (/predict, /predict_batch, /act, /metadata) and openpi's WebSocket."""

    def __init__(self) -> None:
        from vla.policy import VLAPolicy

        self.settings = SETTINGS
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        model = self.settings.model or default_model()
        log.info("loading policy from %s", model)
        policy = VLAPolicy.from_pretrained(model, device=self.settings.device)
        self.engine = Engine(policy, self.settings)
        log.info("serving embodiments %s", sorted(self.engine.embodiments))


VLAService.add_asgi_middleware(GuardMiddleware, token=SETTINGS.token, max_body_bytes=SETTINGS.max_body_bytes)
