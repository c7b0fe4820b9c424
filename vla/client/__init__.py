"""The robot side of a served policy: the HTTP client, the chunk executor and the wire encoders.

Light on purpose: httpx, numpy, pillow and msgpack, never torch, transformers or bentoml (a test
checks ``sys.modules`` in a fresh interpreter), so it runs on a robot computer next to the
controller, and ``vla eval`` drives policies through it::

    from vla.client import ChunkExecutor, VLAClient
"""

from .executor import ChunkExecutor, ExecutorStats
from .http import AsyncVLAClient, RequestRejected, ServerError, VLAClient

__all__ = ["AsyncVLAClient", "ChunkExecutor", "ExecutorStats", "RequestRejected", "ServerError", "VLAClient"]
