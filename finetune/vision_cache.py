"""The frozen vision tower's per-frame feature cache: a frame's features are computed once per run."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vla.decoding import unwrap

from .lora import find_parts


class VisionFeatureCache:
    """Per-frame cache of a frozen vision tower's outputs (bounded, least recently used dropped).

    Installed as an instance-level ``forward`` of the tower: inside ``with cache.keys(k)`` the
    tower returns stored outputs for known frames and computes the others. Outside the context,
    and whenever the images do not match the keys, it is the plain tower.

    Exactness: a frame's features must not depend on the batch it first came in (a resumed run
    would otherwise see last-bit differences). Misses are therefore computed one image at a time,
    except in ``fill`` (``batched=True``), which runs over every training frame in a fixed order
    and batch size before training starts, the same way in a fresh and in a resumed run.
    """

    def __init__(self, tower: nn.Module, max_bytes: float):
        self.tower = tower
        self.max_bytes = max_bytes
        self.store: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self._keys: list | None = None
        self._batched = False
        self._forward = tower.forward
        tower.forward = self._cached_forward  # instance attribute: the class and the library stay untouched

    def remove(self) -> None:
        if self.tower.__dict__.get("forward") == self._cached_forward:
            del self.tower.forward

    def __contains__(self, key) -> bool:
        return key in self.store

    @contextmanager
    def keys(self, keys: list | None, batched: bool = False):
        self._keys, self._batched = keys, batched
        try:
            yield
        finally:
            self._keys, self._batched = None, False

    def _cached_forward(self, pixel_values, *args, **kwargs):
        keys = self._keys
        n = pixel_values.shape[0]
        if keys is None or n != len(keys) or args:
            return self._forward(pixel_values, *args, **kwargs)
        missing = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in self.store))
        self.misses += len(missing)
        self.hits += n - len(missing)
        groups = [missing] if self._batched else [[i] for i in missing]
        computed = {}
        for group in filter(None, groups):
            idx = torch.as_tensor(group, device=pixel_values.device)
            sliced = {k: (v[idx] if torch.is_tensor(v) and v.shape[:1] == pixel_values.shape[:1] else v)
                      for k, v in kwargs.items()}
            with torch.no_grad():
                out = self._forward(pixel_values[idx], **sliced)
            fields = _detach(dict(out))
            for j, i in enumerate(group):
                computed[keys[i]] = {"type": type(out), "fields": _row(fields, j)}
        parts = []
        for k in keys:
            item = computed.get(k)
            if item is None:
                item = self.store[k]
                self.store.move_to_end(k)
            parts.append(item)
        for k, item in computed.items():
            self._put(k, item)
        return parts[0]["type"](**_concat([p["fields"] for p in parts]))

    def _put(self, key, item) -> None:
        size = _nbytes(item["fields"])
        self.store[key] = item
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.store) > 1:
            _, old = self.store.popitem(last=False)
            self.bytes -= _nbytes(old["fields"])


def _row(x, j: int):
    """Row j of every batched tensor, copied (a view would keep the whole batch alive)."""
    if torch.is_tensor(x):
        return x[j:j + 1].clone()
    if isinstance(x, dict):
        return {k: _row(v, j) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_row(v, j) for v in x)
    return x


IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask", "image_sizes")


def image_features(model, inputs: dict[str, torch.Tensor]):
    """Run only the vision side (tower + projector) of a batch, e.g. to fill the feature cache."""
    core = unwrap(model).model
    return core.get_image_features(**{k: inputs[k] for k in IMAGE_INPUTS if k in inputs})


def _detach(x):
    if torch.is_tensor(x):
        return x.detach()
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    return x


def _nbytes(x) -> int:
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    return 0


def _concat(items: list):
    first = items[0]
    if torch.is_tensor(first):
        return torch.cat(items, 0)
    if isinstance(first, dict):
        return {k: _concat([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([it[j] for it in items]) for j in range(len(first)))
    return first


def vision_cache_blocker(model) -> str | None:
    """Why per-frame caching of the frozen tower's outputs cannot serve this model (None when it can)."""
    if find_parts(model).projector_inside_tower:
        return ("the Qwen-VL vision tower takes the patches of all images as one sequence (dynamic resolution) "
                "and ends in the projector (patch merger), which is trained")
    return None


def install_vision_cache(model, max_gb: float) -> VisionFeatureCache:
    tower = unwrap(model).get_submodule(find_parts(model).tower)
    return VisionFeatureCache(tower, max_gb * 2**30)
