"""PPO for a two-player zero-sum game: advantages per player, the clipped update, LR schedules.

Rollouts are time-major arrays ``(T, N)``: step ``t`` of env ``n`` is a move by the side
to move in that position (``to_play``), and values are from that side's view. Each
player's transitions form their own trajectory (its moves are 2 plies apart):

* a move that ends the game gets the env's reward (+1 win, -1 loss, 0 draw) and is terminal;
* a move after which the *opponent* ends the game gets minus the opponent's reward and is
  terminal: a win is +1 for the winner's last move and -1 for the loser's last move;
* truncation (max plies) is not terminal: the move bootstraps from the value of the final
  position, negated when the opponent is to move there;
* otherwise the move bootstraps from the value two plies later (same player to move). The
  last move of a rollout, whose reply is not seen yet, bootstraps from minus the value of
  the position after it (the opponent's view, negated).

``gamma`` discounts per own move.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from keisei.config import PPOConfig
from keisei.nn.policy import Policy, kl_divergence, logprob_entropy
from keisei.train import distributed
from keisei.train.optim import optimizer_step


def two_player_gae(rewards: torch.Tensor, ended: torch.Tensor, truncated: torch.Tensor,
                   values: torch.Tensor, final_values: torch.Tensor, next_value: torch.Tensor,
                   gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns, each ``(T, N)``, from the mover's view.

    rewards: the env's reward for move t (mover's view); ended: the game ended with move t
    (terminated or truncated); truncated: it ended by max plies; values: V(s_t), mover's view;
    final_values: V(final position) of a game ended at t, from the view of the side to move
    there (read where truncated); next_value: (N,) V(s_T), the position after the rollout.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(values)
    zeros = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        # Case 1: this move ended the game.
        own_target = torch.where(truncated[t], -final_values[t], zeros)  # opponent to move there
        target = rewards[t] + gamma * own_target
        done = ended[t]
        continuation = zeros
        if t + 1 < steps:
            # Case 2: the opponent's reply ended the game (mover is to move in its final position).
            reply_ended = ended[t + 1] & ~done
            reply_target = -rewards[t + 1] + gamma * torch.where(truncated[t + 1], final_values[t + 1], zeros)
            target = torch.where(reply_ended, reply_target, target)
            done = done | ended[t + 1]
            # Case 3: the game goes on; the mover moves again at t + 2.
            later = values[t + 2] if t + 2 < steps else next_value
            target = torch.where(done, target, gamma * later)
            if t + 2 < steps:
                continuation = torch.where(done, zeros, gamma * lam * advantages[t + 2])
        else:
            # Case 4: last move of the rollout, reply unseen: bootstrap from the opponent's view.
            target = torch.where(done, target, gamma * -next_value)
        advantages[t] = target - values[t] + continuation
    return advantages, advantages + values


@dataclass
class Batch:
    """A flattened rollout of the learner's transitions."""

    obs: torch.Tensor  # uint8 (B, 125, 9, 9)
    legal_mask: torch.Tensor  # bool (B, 2187)
    actions: torch.Tensor  # int64 (B,)
    logprobs: torch.Tensor  # (B,)
    values: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)


def ppo_update(policy: Policy, optimizer: torch.optim.Optimizer, batch: Batch, cfg: PPOConfig,
               max_grad_norm: float, generator: torch.Generator,
               scaler: torch.amp.GradScaler | None = None, init_policy: Policy | None = None) -> dict[str, float]:
    """``cfg.update_epochs`` epochs of clipped PPO over shuffled minibatches; returns loss metrics.
    ``init_policy``: the network the run started from (``training.init_checkpoint``), frozen: adds
    ``losses/init_kl`` and, with ``cfg.init_kl_coef`` > 0, its penalty (``ppo_loss``)."""
    model = policy.model
    # Eval mode, as in the rollout: the old and new log-probabilities come from the same function
    # (BatchNorm normalises with its running statistics in both; refreshed after the update below).
    model.eval()
    size = batch.actions.shape[0]
    # Minibatches of nearly equal size, about minibatch_size each: a batch of learner moves only
    # (opponent-pool games) is ragged, and a tiny trailing minibatch would get its own noisy
    # advantage normalisation. Every rank takes the same number of optimizer steps (their
    # gradients are averaged at each).
    chunks = int(distributed.all_reduce(max(1, round(size / cfg.minibatch_size)), "min"))
    stats: dict[str, list[float]] = {k: [] for k in LOSS_NAMES}
    for _ in range(cfg.update_epochs):
        order = torch.randperm(size, generator=generator).to(batch.actions.device)
        for idx in torch.tensor_split(order, chunks):
            loss, parts = ppo_loss(policy, batch, idx, cfg, init_policy)
            optimizer_step(model, optimizer, loss, max_grad_norm, scaler)
            for key, value in parts.items():
                stats.setdefault(key, []).append(float(value))
        if cfg.target_kl is not None and distributed.all_reduce(stats["approx_kl"][-1], "mean") > cfg.target_kl:
            break
    refresh_batch_norm(model, batch.obs)
    out = {f"losses/{k}": sum(v) / len(v) for k, v in stats.items()}
    var = float(batch.returns.var())
    residual = float((batch.returns - batch.values).var())
    out["losses/explained_variance"] = float("nan") if var == 0 else 1.0 - residual / var
    return out


#: The per-minibatch metrics of ``ppo_loss`` (averaged into ``losses/<name>``); with an ``init_policy``
#: also ``init_kl``.
LOSS_NAMES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")


def ppo_loss(policy: Policy, batch: Batch, idx: torch.Tensor, cfg: PPOConfig, init_policy: Policy | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO loss of minibatch ``idx`` and its parts (detached), CleanRL's way; with an
    ``init_policy``, plus ``cfg.init_kl_coef`` times ``init_kl``, KL(pi_init || pi) over the legal moves."""
    obs, mask = batch.obs[idx], batch.legal_mask[idx]
    logits, new_values = policy.logits_and_value(obs, mask)
    new_logprob, entropy = logprob_entropy(logits, batch.actions[idx])
    entropy = entropy.mean()
    logratio = new_logprob - batch.logprobs[idx]
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
    adv = batch.advantages[idx]
    if cfg.norm_adv and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    returns = batch.returns[idx]
    if cfg.clip_vloss:
        old = batch.values[idx]
        clipped = old + (new_values - old).clamp(-cfg.clip_coef, cfg.clip_coef)
        value_loss = 0.5 * torch.max((new_values - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        value_loss = 0.5 * ((new_values - returns) ** 2).mean()
    loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
    parts = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, "approx_kl": approx_kl,
             "clipfrac": clipfrac}
    if init_policy is not None:
        parts["init_kl"] = init_kl = kl_to_init(init_policy, obs, mask, logits)
        if cfg.init_kl_coef > 0:
            loss = loss + cfg.init_kl_coef * init_kl
    return loss, {k: v.detach() for k, v in parts.items()}


def kl_to_init(init_policy: Policy, obs: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The mean KL(pi_init || pi) of the positions ``obs``: ``logits`` are pi's (masked, with gradients),
    ``init_policy`` the frozen network the run started from."""
    with torch.no_grad():
        init_logits, _ = init_policy.logits_and_value(obs, mask)
    return kl_divergence(init_logits, logits).mean()


@torch.no_grad()
def refresh_batch_norm(model: nn.Module, obs: torch.Tensor, chunk: int = 1024) -> None:
    """Re-estimate BatchNorm's running statistics on ``obs`` with the updated weights (a no-op for
    networks without BatchNorm). Updates run in eval mode, so this is where the statistics that the
    next rollout and update share come from."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the chunks
        layer.train()
    for start in range(0, obs.shape[0], chunk):
        model(obs[start:start + chunk])
    for layer in layers:
        layer.momentum = 0.1
        layer.eval()
