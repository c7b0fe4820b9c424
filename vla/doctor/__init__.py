"""``vla doctor``: tell a pipeline fault from under-training.

"The loss is low but the robot fails" has two kinds of cause. A pipeline fault caps every policy
whatever its training: actions clipped or coarsened by normalization and tokenization, training
frames that differ from what the robot sends, a server that answers differently from the
checkpoint, or a loop that cannot replay even a memorized episode. Under-training is the rest. The
doctor runs one check per fault and ends with a verdict and the fix.

>>> from vla.doctor import diagnose, format_report
>>> report = diagnose("runs/my_run", ["data/so101"], parity=False)  # doctest: +SKIP
>>> print(format_report(report))  # doctest: +SKIP
"""

from __future__ import annotations

from .checks import diagnose
from .verdict import format_report, markdown_summary, verdict

__all__ = ["diagnose", "format_report", "markdown_summary", "verdict"]

