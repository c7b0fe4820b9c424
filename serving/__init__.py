"""Serving: the BentoML service (vla.serving.service), the robot-side client and the chunk executor.

Importing this package stays light (no torch, no bentoml): ``from vla.serving import VLAClient``.
"""

from .client import AsyncVLAClient, RequestRejected, ServerError, VLAClient
from .executor import ChunkExecutor, ExecutorStats

__all__ = ["AsyncVLAClient", "ChunkExecutor", "ExecutorStats", "RequestRejected", "ServerError", "VLAClient"]
