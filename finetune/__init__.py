"""LoRA fine-tuning of stock Hugging Face VLMs into VLA policies (``vla finetune``, ``vla export``).

>>> from vla.finetune import DatasetSpec, FinetuneConfig, run
>>> cfg = FinetuneConfig(base="default", out="runs/demo")
>>> cfg.datasets = {"so101": DatasetSpec(path="data/so101")}
>>> run(cfg).code
0
"""

from .config import DatasetSpec, FinetuneConfig

__all__ = ["DatasetSpec", "FinetuneConfig", "run"]


def run(cfg: FinetuneConfig, **kwargs):
    """Train, resume (``resume=True``) or plan (``dry_run=True``) a run; see :func:`vla.finetune.runner.run`."""
    from .runner import run as _run

    return _run(cfg, **kwargs)
