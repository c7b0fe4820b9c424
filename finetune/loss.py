"""The action-token loss: hidden states come from ``vla.decoding.hidden_states`` (the backbone without its
output layer); only the positions that predict action tokens are multiplied by the action rows of the
output layer, so the cost is (tokens x action vocabulary), not (positions x full vocabulary)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vla.decoding import action_head, extend, hidden_states, model_position_ids

IGNORE = -100


class ActionLoss(nn.Module):
    """Cross-entropy over the action vocabulary at the positions that predict action tokens.

    ``forward(inputs, appended, labels)``: ``inputs`` are the left-padded prompts from
    ``VLAPolicy.prepare`` (train/serve parity), ``appended`` (B, T) the teacher-forced action
    tokens (autoregressive) or query slots (parallel), ``labels`` (B, T) action-vocabulary indices
    with -100 where no loss is taken (padding of shorter sequences, masked steps).
    ``label_sigma`` > 0 (bins only) replaces each one-hot target with a Gaussian of that standard
    deviation in bins, integrated over the bins (HL-Gauss, Imani & White 2018; Farebrother et al.
    2024), so a near miss costs less than a far one and neighbouring bins learn from each other.
    Returns (mean loss, number of labelled tokens, number predicted right).
    """

    def __init__(self, model, action_ids: Sequence[int], parallel: bool, label_sigma: float = 0.0):
        super().__init__()
        self.model = model
        self.action_ids = list(action_ids)
        self.parallel = parallel
        self.label_sigma = label_sigma

    def targets(self, target: torch.Tensor) -> torch.Tensor:
        """(n, vocab) soft targets: the mass of N(bin, label_sigma) that falls on each bin."""
        edges = torch.arange(len(self.action_ids) + 1, device=target.device, dtype=torch.float32) - 0.5
        cdf = torch.special.ndtr((edges[None, :] - target[:, None].float()) / self.label_sigma)
        mass = cdf[:, 1:] - cdf[:, :-1]
        return mass / mass.sum(-1, keepdim=True)  # the tails beyond the first and last bin go to the rest

    def forward(self, inputs: dict[str, torch.Tensor], appended: torch.Tensor, labels: torch.Tensor):
        prompt_len = inputs["input_ids"].shape[1]
        steps = appended.shape[1]
        out = hidden_states(self.model, extend(self.model, inputs, appended))
        start = prompt_len if self.parallel else prompt_len - 1  # position p predicts the token at p + 1
        h = out.last_hidden_state[:, start:start + steps]
        weight, bias = action_head(self.model, self.action_ids)
        valid = labels != IGNORE
        h = h[valid]  # only labelled positions are multiplied by the action rows
        logits = (h.to(weight.dtype) @ weight.T).float()
        if bias is not None:
            logits = logits + bias.float()
        target = labels[valid]
        n = target.numel()
        soft = self.targets(target) if self.label_sigma > 0 else target
        loss = nn.functional.cross_entropy(logits, soft, reduction="sum") / max(n, 1)
        correct = (logits.argmax(-1) == target).sum()
        return loss, torch.tensor(n, device=loss.device), correct


class NaiveLoss(ActionLoss):
    """The incumbent path, for benchmarks: full-vocabulary logits at every position through the model's
    own forward (lm_head over all positions), then cross-entropy restricted to the action positions."""

    def forward(self, inputs, appended, labels):
        prompt_len = inputs["input_ids"].shape[1]
        steps = appended.shape[1]
        full = extend(self.model, inputs, appended)
        logits = self.model(**full, position_ids=model_position_ids(self.model, full)).logits
        start = prompt_len if self.parallel else prompt_len - 1
        logits = logits[:, start:start + steps].float()
        valid = labels != IGNORE
        target = torch.as_tensor(self.action_ids, device=logits.device)[labels[valid]]
        selected = logits[valid]
        n = target.numel()
        loss = nn.functional.cross_entropy(selected, target, reduction="sum") / max(n, 1)
        return loss, torch.tensor(n, device=loss.device), (selected.argmax(-1) == target).sum()
