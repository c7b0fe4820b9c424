"""Action tokenizers: normalized action chunks (H, D) <-> discrete action token ids.

``bins``: uniform binning, one token per value. ``fast``: DCT over time + BPE
(variable length, fit on training chunks). Both honour the constrained-decoding
contract documented on :class:`ActionTokenizer`.
"""

from .base import CONFIG_FILE, FORMAT_VERSION, ActionTokenizer, load_action_tokenizer, make_action_tokenizer
from .binning import BinningActionTokenizer
from .fast import FastActionTokenizer, dct_matrix
from .report import format_report, report

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "ActionTokenizer",
    "BinningActionTokenizer",
    "FastActionTokenizer",
    "dct_matrix",
    "format_report",
    "load_action_tokenizer",
    "make_action_tokenizer",
    "report",
]
