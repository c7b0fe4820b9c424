"""Serving: the BentoML service (vla.serving.service) and the ``vla serve`` command.

The robot-side client and chunk executor live in the core library (vla.client); they are
re-exported here, and importing this package stays light (no torch, no bentoml):
``from vla.serving import VLAClient``.
"""

from vla.client import AsyncVLAClient, ChunkExecutor, ExecutorStats, RequestRejected, ServerError, VLAClient

__all__ = ["AsyncVLAClient", "ChunkExecutor", "ExecutorStats", "RequestRejected", "ServerError", "VLAClient"]
