"""SequenceMatch: imitation learning with a backspace action.

From "SequenceMatch: Imitation Learning for Autoregressive Sequence Modelling with
Backtracking" (Cundy & Ermon, ICLR 2024, arXiv:2306.05426).

The action set is the vocabulary plus one ``<bksp>`` action that deletes the last token.
This file holds, top to bottom:

* ``apply_backspaces`` – the state (token stack) an action sequence leads to.
* ``backtrack_layout`` – tokens, position ids and an ``ar_core`` ``MaskSpec`` that run a
  whole action sequence with backspaces in ONE forward pass, so that the output at every
  position is exactly the model's output on the current state (the stack).
* ``augment_with_backspaces`` – expert sequences with noise tokens, each followed by
  ``<bksp>`` (the paper's data augmentation).
* ``sequencematch_loss`` / ``bc_loss`` / ``mixed_loss`` – the objective (see
  ``sequencematch_loss`` for exactly which form is implemented).
* ``sample_with_noise`` – ancestral sampling where, with probability ``eps``, the sampled
  action is replaced by a random noise token (the evaluation of section 6).

Layout trick (how a backspace is run in one pass). Position ``t`` with a token action
pushes it: input token = the action, position id = stack depth before the push, it sees
the stack (itself included). Position ``t`` with ``<bksp>`` pops the stack and then
*re-presents the new top*: its input token and position id are those of the new top, and
it sees the stack below the top plus itself. Its keys/values are then exactly those of
the top, so its output is exactly the output at the state it leads to. Deleted tokens are
invisible from their deletion on; backspace positions are invisible to every later
position. A backspace may never empty the stack (the first action is the prompt/BOS).

Notation: B batch, T actions, A = V + 1 actions (``<bksp>`` is one of the ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.masks import MaskMod, MaskSpec
from ar_core.model import Transformer


def apply_backspaces(actions: Sequence[int], bksp_id: int) -> list[int]:
    """The tokens left after running ``actions``; a backspace on an empty stack is a no-op."""
    stack: list[int] = []
    for a in actions:
        if a == bksp_id:
            if stack:
                stack.pop()
        else:
            stack.append(int(a))
    return stack


# ----------------------------------------------------------------------------------
# One-pass layout
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktrackLayout:
    """Inputs of one forward pass over action sequences with backspaces.

    ``tokens`` (B, T): input ids (a backspace position re-presents the new top token);
    ``positions`` (B, T): RoPE position ids (stack depth); ``mask``: the attention mask;
    ``visible`` (B, T, T): its dense form, ``visible[b, q, k]`` = q may attend to k.
    """

    tokens: Tensor
    positions: Tensor
    mask: MaskSpec
    visible: Tensor


def _check_actions(actions: Tensor, bksp_id: int) -> None:
    if not isinstance(actions, Tensor) or actions.ndim != 2:
        shape = tuple(actions.shape) if isinstance(actions, Tensor) else type(actions).__name__
        raise InputError(f"actions must be a (B, T) tensor of action ids, got {shape}")
    if actions.dtype != torch.long:
        raise InputError(f"actions must be long (int64), got dtype {actions.dtype}")
    if actions.numel() == 0:
        raise InputError(f"actions must be non-empty, got shape {tuple(actions.shape)}")
    if bksp_id < 0:
        raise ConfigError(f"bksp_id must be >= 0, got {bksp_id}")
    if bool((actions < 0).any()):
        raise InputError(f"action ids must be >= 0, got min {int(actions.min())}")


def _visibility_mask(visible: Tensor) -> MaskSpec:
    """A MaskSpec that looks up a precomputed (B, T, T) visibility table."""
    n = visible.shape[-1]
    table = visible.detach().clone()

    def factory(device: torch.device) -> MaskMod:
        vis = table.to(device)

        def backtrack_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return vis[b, q.clamp(0, n - 1), kv.clamp(0, n - 1)]

        return backtrack_mod

    return MaskSpec(
        mask_mod=factory(table.device),
        name=f"backtrack(B={table.shape[0]}, N={n})",
        cache_key=("backtrack", tuple(table.shape), table.cpu().numpy().tobytes()),
        length=n,
        factory=factory,
    )


def backtrack_layout(actions: Tensor, bksp_id: int) -> BacktrackLayout:
    """Tokens, positions and mask that run ``actions`` (B, T) in one causal-like pass.

    Raises ``InputError`` when a row starts with ``<bksp>`` or a backspace would delete the
    first action (the prompt), since then there is no state to re-present.
    """
    _check_actions(actions, bksp_id)
    B, T = actions.shape
    acts = actions.detach().cpu().tolist()
    tokens = torch.empty(B, T, dtype=torch.long)  # (B, T)
    positions = torch.empty(B, T, dtype=torch.long)  # (B, T)
    visible = torch.zeros(B, T, T, dtype=torch.bool)  # (B, T, T)
    for b, row in enumerate(acts):
        stack: list[int] = []  # indices of the positions holding the live tokens
        for t, a in enumerate(row):
            if a == bksp_id:
                if len(stack) <= 1:
                    raise InputError(
                        f"backspace at (row {b}, position {t}) would delete the first action "
                        f"(the prompt); every row must keep at least one token"
                    )
                stack.pop()
                top = stack[-1]
                tokens[b, t], positions[b, t] = tokens[b, top], positions[b, top]
                seen = [*stack[:-1], t]  # the copy stands in for the top
            else:
                tokens[b, t], positions[b, t] = a, len(stack)
                stack.append(t)
                seen = list(stack)
            visible[b, t, seen] = True
    device = actions.device
    return BacktrackLayout(
        tokens=tokens.to(device),
        positions=positions.to(device),
        mask=_visibility_mask(visible),
        visible=visible,
    )


def backtrack_logits(model: Transformer, actions: Tensor, bksp_id: int) -> Tensor:
    """(B, T, A) logits = soft Q values Q(s_t, .) at the state after each action."""
    layout = backtrack_layout(actions, bksp_id)
    return model(layout.tokens, positions=layout.positions, mask=layout.mask).logits


# ----------------------------------------------------------------------------------
# Data augmentation
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentedBatch:
    """``actions`` (B, T); ``expert`` (B, T) float, 1 where the action at t is an expert
    action (expert token or a corrective ``<bksp>``), 0 for noise, padding and the first
    action (the prompt, not predicted); ``valid`` (B, T) bool, False on padding."""

    actions: Tensor
    expert: Tensor
    valid: Tensor


def augment_with_backspaces(
    sequences: Sequence[Sequence[int]],
    *,
    bksp_id: int,
    noise_ids: Sequence[int],
    p_noise: float,
    max_noise: int = 1,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> AugmentedBatch:
    """Insert noise before expert tokens: with probability ``p_noise`` before each expert
    token after the prompt, ``k`` uniform in ``[1, max_noise]`` noise tokens then ``k``
    backspaces (so nested patterns like ``a n1 n2 <bksp> <bksp> b`` occur)."""
    if not 0.0 <= p_noise <= 1.0:
        raise ConfigError(f"p_noise must be in [0, 1], got {p_noise}")
    if max_noise < 1:
        raise ConfigError(f"max_noise must be >= 1, got {max_noise}")
    if not noise_ids or bksp_id in noise_ids:
        raise ConfigError("noise_ids must be non-empty and must not contain bksp_id")
    if not sequences or any(len(s) < 1 for s in sequences):
        raise InputError("sequences must be non-empty, each with at least the prompt token")
    if any(bksp_id in s for s in sequences):
        raise InputError("expert sequences must not contain bksp_id")
    noise = torch.as_tensor(list(noise_ids), dtype=torch.long)
    rows: list[list[int]] = []
    flags: list[list[float]] = []
    for seq in sequences:
        acts, expert = [int(seq[0])], [0.0]
        for tok in seq[1:]:
            if float(torch.rand((), generator=generator)) < p_noise:
                k = int(torch.randint(1, max_noise + 1, (), generator=generator))
                picks = noise[torch.randint(0, len(noise), (k,), generator=generator)]
                acts += [*picks.tolist(), *([bksp_id] * k)]
                expert += [0.0] * k + [1.0] * k
            acts.append(int(tok))
            expert.append(1.0)
        rows.append(acts)
        flags.append(expert)
    T = max(len(r) for r in rows)
    actions = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
    weights = torch.zeros(len(rows), T)  # (B, T)
    valid = torch.zeros(len(rows), T, dtype=torch.bool)  # (B, T)
    for i, (r, f) in enumerate(zip(rows, flags, strict=True)):
        actions[i, : len(r)] = torch.tensor(r)
        weights[i, : len(f)] = torch.tensor(f)
        valid[i, : len(r)] = True
    return AugmentedBatch(actions=actions, expert=weights, valid=valid)


# ----------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------


def _check_loss_inputs(logits: Tensor, batch: AugmentedBatch) -> None:
    if logits.ndim != 3 or logits.shape[:2] != batch.actions.shape:
        raise InputError(
            f"logits must be (B, T, A) with (B, T) = {tuple(batch.actions.shape)}, got "
            f"{tuple(logits.shape)}"
        )
    if batch.actions.shape[1] < 2:
        raise InputError("need at least 2 actions per row (a prompt and one transition)")
    if int(batch.actions.max()) >= logits.shape[-1]:
        raise InputError(
            f"action id {int(batch.actions.max())} out of range for {logits.shape[-1]} logits"
        )
    if float(batch.expert.sum()) <= 0:
        raise InputError("the batch has no expert actions (all weights are zero)")


def sequencematch_loss(
    logits: Tensor,
    batch: AugmentedBatch,
    *,
    eos_id: int,
    gamma: float = 0.99,
    chi2_coef: float = 0.5,
) -> Tensor:
    """SequenceMatch loss (to minimise), an offline IQ-Learn objective with a chi^2 term.

    Logits are soft Q values: ``Q(s_t, a) = logits[:, t, a]`` where ``s_t`` is the state
    (stack) after action ``t``; ``V(s) = logsumexp_a Q(s, a)``; the policy is
    ``softmax(Q)``. For each transition ``(s_t, a_{t+1}, s_{t+1})`` the implied reward is

        r_t = Q(s_t, a_{t+1}) - gamma * V(s_{t+1}),   V(s_{t+1}) := 0 if a_{t+1} == eos.

    Implemented (section 4's chi^2-mixture divergence in its IQ-Learn form, with
    ``phi(r) = r - r^2 / (4 chi2_coef)`` and the quadratic term taken over the mixture):

        L = - E_expert[r_t] + E_mix[V(s_t) - gamma V(s_{t+1})] + E_mix[r_t^2] / (4 chi2_coef)

    * ``E_expert``: transitions whose action is an expert action (``batch.expert``: expert
      tokens and the corrective ``<bksp>`` after noise).
    * ``E_mix``: all valid transitions of the batch, expert and noise ones.

    Assumptions (not taken verbatim from the paper): (1) *offline*: no on-policy rollouts;
    the noise transitions of the augmented data stand in for the policy part of the
    mixture ``rho_mix = (rho_data + rho_theta) / 2``, so ``E_mix`` is an average over the
    augmented batch, not over model samples; (2) the value term is the telescoped
    ``V(s) - gamma V(s')`` over the same transitions (IQ-Learn's offline form) instead of
    ``(1 - gamma) E[V(s_0)]``; (3) terminal states (after ``eos``) have value 0 and rows
    cut by padding bootstrap from their last state's V; (4) ``gamma < 1`` is allowed for
    stability, ``gamma = 1`` is the undiscounted sequence setting.
    """
    _check_loss_inputs(logits, batch)
    if not 0.0 < gamma <= 1.0:
        raise ConfigError(f"gamma must be in (0, 1], got {gamma}")
    if chi2_coef <= 0:
        raise ConfigError(f"chi2_coef must be > 0, got {chi2_coef}")
    q = logits.float()  # (B, T, A)
    v = torch.logsumexp(q, dim=-1)  # (B, T)
    nxt = batch.actions[:, 1:]  # (B, T-1)
    q_sa = q[:, :-1].gather(-1, nxt[..., None]).squeeze(-1)  # (B, T-1)
    not_done = (nxt != eos_id).to(q.dtype)  # (B, T-1)
    v_next = gamma * v[:, 1:] * not_done  # (B, T-1)
    r = q_sa - v_next  # (B, T-1)
    w_exp = batch.expert[:, 1:].to(q.dtype)  # (B, T-1)
    w_mix = batch.valid[:, 1:].to(q.dtype)  # (B, T-1)
    expert_term = (w_exp * r).sum() / w_exp.sum()
    value_term = (w_mix * (v[:, :-1] - v_next)).sum() / w_mix.sum()
    chi2_term = (w_mix * r.square()).sum() / w_mix.sum() / (4.0 * chi2_coef)
    return -expert_term + value_term + chi2_term


def bc_loss(logits: Tensor, batch: AugmentedBatch) -> Tensor:
    """Behaviour cloning: cross-entropy of the expert actions (noise and padding excluded)."""
    _check_loss_inputs(logits, batch)
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch.actions[:, 1:].flatten(), reduction="none"
    )  # (B*(T-1),)
    w = batch.expert[:, 1:].flatten().to(nll.dtype)
    return (w * nll).sum() / w.sum()


def mixed_loss(
    logits: Tensor,
    batch: AugmentedBatch,
    *,
    step: int,
    warmup_steps: int,
    alpha: float,
    eos_id: int,
    gamma: float = 0.99,
    chi2_coef: float = 0.5,
) -> Tensor:
    """BC for ``step < warmup_steps``, then ``(1 - alpha) * BC + alpha * SequenceMatch``."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    bc = bc_loss(logits, batch)
    if step < warmup_steps or alpha == 0.0:
        return bc
    sm = sequencematch_loss(logits, batch, eos_id=eos_id, gamma=gamma, chi2_coef=chi2_coef)
    return (1.0 - alpha) * bc + alpha * sm


# ----------------------------------------------------------------------------------
# Sampling with injected noise
# ----------------------------------------------------------------------------------


@torch.no_grad()
def sample_with_noise(
    model: Transformer,
    prompts: Tensor,
    *,
    bksp_id: int,
    eos_id: int,
    noise_ids: Sequence[int],
    eps: float,
    max_actions: int,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Sample action sequences from ``prompts`` (B, 1); with probability ``eps`` each sampled
    action is replaced by a uniform noise token. A backspace that would delete the prompt is
    replaced by a noise-free no-op (skipped). Returns the final token lists (backspaces
    applied, ``eos`` kept when produced), one full forward pass per step (no cache)."""
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(f"eps must be in [0, 1], got {eps}")
    if prompts.ndim != 2 or prompts.shape[1] != 1:
        raise InputError(f"prompts must be (B, 1), got {tuple(prompts.shape)}")
    B = prompts.shape[0]
    noise = torch.as_tensor(list(noise_ids), dtype=torch.long)
    rows: list[list[int]] = [[int(p)] for p in prompts[:, 0].tolist()]
    depth = [1] * B
    done = [False] * B
    for _ in range(max_actions):
        if all(done):
            break
        T = max(len(r) for r in rows)
        padded = torch.tensor([r + [r[0]] * (T - len(r)) for r in rows])  # (B, T)
        logits = backtrack_logits(model, padded.to(model.device), bksp_id)  # (B, T, A)
        last = torch.tensor([len(r) - 1 for r in rows])
        step_logits = logits[torch.arange(B), last.to(logits.device)].float().cpu()  # (B, A)
        if depth.count(1):  # no backspace from the prompt alone
            step_logits[torch.tensor(depth) == 1, bksp_id] = float("-inf")
        acts = torch.multinomial(step_logits.softmax(-1), 1, generator=generator)[:, 0]
        flip = torch.rand(B, generator=generator) < eps
        repl = noise[torch.randint(0, len(noise), (B,), generator=generator)]
        acts = torch.where(flip, repl, acts)  # (B,)
        for b, a in enumerate(acts.tolist()):
            if done[b]:
                continue
            rows[b].append(a)
            depth[b] += -1 if a == bksp_id else 1
            done[b] = a == eos_id
    return [apply_backspaces(r, bksp_id) for r in rows]


__all__ = [
    "AugmentedBatch",
    "BacktrackLayout",
    "apply_backspaces",
    "augment_with_backspaces",
    "backtrack_layout",
    "backtrack_logits",
    "bc_loss",
    "mixed_loss",
    "sample_with_noise",
    "sequencematch_loss",
]
