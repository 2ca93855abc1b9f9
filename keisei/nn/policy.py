"""The one masked policy: a network's logits restricted to the legal moves, and its value.

Everything that plays or trains a network goes through ``Policy``: the rollout (``act``),
the PPO update (``logits_and_value``, then ``logprob_entropy``: CleanRL's ``get_action_and_value`` with
the action given; ``kl_divergence`` to the network a run started from),
``AgentPlayer`` in matches and the USI engine (``act`` with a temperature), and bootstrap
values (``value``). Illegal actions get the most negative finite logit: zero probability,
finite entropy terms.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn


def masked_logits(logits: torch.Tensor, legal_mask: torch.Tensor) -> torch.Tensor:
    """Float32 logits with illegal actions at the most negative finite value."""
    logits = logits.float()
    return logits.masked_fill(~legal_mask, torch.finfo(logits.dtype).min)


def logprob_entropy(logits: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (B,) of the given actions and entropies (B,) of masked logits (B, 2187)."""
    logp = torch.log_softmax(logits, dim=1)
    # softmax, not logp.exp(): exp of the masked entries' huge negative logs is ten times slower
    entropy = -(torch.softmax(logits, dim=1) * logp).sum(dim=1)
    return logp.gather(1, action[:, None]).squeeze(1), entropy


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || pi) per row (B,) of two masked logits (B, 2187) of the same positions: a sum over the
    legal moves, where the illegal ones, of probability 0 under ``ref``, add exactly 0."""
    ref_logp = torch.log_softmax(ref_logits, dim=1)
    return (torch.softmax(ref_logits, dim=1) * (ref_logp - torch.log_softmax(logits, dim=1))).sum(dim=1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (B, N), drawn with those probabilities: the inverse of each
    row's cumulative sum at one uniform number (on ``probs``' device). One uniform number per row,
    where ``torch.multinomial`` draws one per entry (2187): ``benchmarks/forward_glue.py`` compares
    the two. An index of probability 0 (an illegal move) is never drawn (``invert_cdf``)."""
    cdf = probs.cumsum(dim=1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=probs.dtype)
    return invert_cdf(probs, cdf, u)


def invert_cdf(probs: torch.Tensor, cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first index of each row whose ``cdf`` exceeds ``u`` (B, 1) in [0, 1) times the row's total.

    With exact sums an index of probability 0 has the same cumulative sum as the one before it and is
    never the first to exceed; a cumulative sum computed in parallel (CUDA) may step down by an ulp
    there, so a drawn index of probability 0 is replaced by the row's most likely index."""
    total = cdf[:, -1:]
    u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    drawn = torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[1] - 1)
    legal = probs.gather(1, drawn) > 0
    return torch.where(legal, drawn, probs.argmax(dim=1, keepdim=True)).squeeze(1)


class Policy:
    """A network ``forward(obs) -> (logits, value)`` seen as a masked policy and a value.

    Args:
        model: the network (its parameters are what optimizers and checkpoints see).
        forward: what to call instead of ``model`` (e.g. ``torch.compile(model)``); default ``model``.
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` to run the forward pass under autocast.
    """

    def __init__(self, model: nn.Module, *, forward: nn.Module | None = None,
                 autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.forward = forward if forward is not None else model
        self.autocast_dtype = autocast_dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self) -> AbstractContextManager:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def logits_and_value(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked float32 logits (B, 2187) and float32 values (B,) for uint8 planes and bool masks."""
        with self._autocast():
            logits, value = self.forward(obs)
        return masked_logits(logits, mask), value.float()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions (B,), their log-probabilities (B,) and values (B,) of the positions.

        ``temperature`` 1 samples from the policy (training), 0 plays the most likely legal move,
        other values sample from the policy softened by it. The log-probability is that of the
        distribution sampled from (the plain policy at temperature 0 and 1). ``generator``
        draws the samples (on its own device); default: torch's global generator.
        """
        logits, value = self.logits_and_value(obs, mask)
        if temperature == 0:
            action = logits.argmax(dim=1)
            logprob = torch.log_softmax(logits, dim=1).gather(1, action[:, None]).squeeze(1)
            return action, logprob, value
        logits = logits / temperature
        device = generator.device if generator is not None else logits.device
        action = sample(torch.softmax(logits, dim=1).to(device), generator).to(logits.device)
        logprob = torch.log_softmax(logits, dim=1).gather(1, action[:, None]).squeeze(1)
        return action, logprob, value

    def logprob_entropy_value(self, obs: torch.Tensor, mask: torch.Tensor, action: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities (B,) of the given actions, entropies (B,) and values (B,), with gradients."""
        logits, value = self.logits_and_value(obs, mask)
        return (*logprob_entropy(logits, action), value)

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """Values (B,), float32, side to move's view."""
        with self._autocast():
            return self.forward(obs)[1].float()
