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
  ``sequencematch_loss`` for exactly which form is implemented and what it was checked
  against), offline by default, on-policy when given the model's own rollouts.
* ``sample_with_noise`` – ancestral sampling where, with probability ``eps``, the sampled
  action is replaced by a random noise token (the evaluation of section 6).
* ``sample_rollouts`` – the model's own action sequences (``<bksp>`` included, padded) for
  the policy-occupancy term of the on-policy loss.

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

from ar_core import masks
from ar_core.errors import ConfigError, InputError
from ar_core.masks import MaskSpec
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
        mask=masks.table(visible, name="backtrack"),
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


@dataclass(frozen=True)
class RolloutBatch:
    """Action sequences the model generated itself (see ``sample_rollouts``).

    ``actions`` (B, T): raw actions, ``<bksp>`` included, padded with ``pad_id`` after a
    row's last action; ``valid`` (B, T) bool, False on padding. Every row starts with its
    prompt and no backspace ever deletes the prompt, so ``backtrack_layout`` accepts it.
    """

    actions: Tensor
    valid: Tensor


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


def _check_policy_inputs(logits: Tensor, batch: RolloutBatch, n_actions: int) -> None:
    if logits.ndim != 3 or logits.shape[:2] != batch.actions.shape:
        raise InputError(
            f"policy_logits must be (B, T, A) with (B, T) = {tuple(batch.actions.shape)}, got "
            f"{tuple(logits.shape)}"
        )
    if logits.shape[-1] != n_actions:
        raise InputError(
            f"policy_logits have {logits.shape[-1]} actions, the expert logits {n_actions}"
        )
    if batch.actions.shape[1] < 2 or not bool(batch.valid[:, 1:].any()):
        raise InputError("the rollouts have no transition (every row is a bare prompt)")
    if int(batch.actions.max()) >= n_actions or int(batch.actions.min()) < 0:
        raise InputError(f"rollout action ids must be in [0, {n_actions})")


def _soft_bellman(q: Tensor, actions: Tensor, eos_id: int, gamma: float) -> tuple[Tensor, Tensor]:
    """Per transition ``(s_t, a_{t+1}, s_{t+1})``, both (B, T-1):

    ``r_t = Q(s_t, a_{t+1}) - gamma * V(s_{t+1})`` (the implied reward, inverse soft Bellman)
    and ``dv_t = V(s_t) - gamma * V(s_{t+1})``, with ``V(s_{t+1}) := 0`` when
    ``a_{t+1} == eos``."""
    v = torch.logsumexp(q, dim=-1)  # (B, T)
    nxt = actions[:, 1:]  # (B, T-1)
    q_sa = q[:, :-1].gather(-1, nxt[..., None]).squeeze(-1)  # (B, T-1)
    v_next = gamma * v[:, 1:] * (nxt != eos_id).to(q.dtype)  # (B, T-1)
    return q_sa - v_next, v[:, :-1] - v_next


def _wmean(x: Tensor, w: Tensor) -> Tensor:
    return (w * x).sum() / w.sum()


def sequencematch_loss(
    logits: Tensor,
    batch: AugmentedBatch,
    *,
    eos_id: int,
    gamma: float = 0.99,
    chi2_coef: float = 0.5,
    policy_logits: Tensor | None = None,
    policy_batch: RolloutBatch | None = None,
    policy_weight: float = 0.5,
) -> Tensor:
    """SequenceMatch loss (to minimise): an IQ-Learn objective with a chi^2 term on a mixture.

    Logits are soft Q values: ``Q(s_t, a) = logits[:, t, a]`` where ``s_t`` is the state
    (stack) after action ``t``; ``V(s) = logsumexp_a Q(s, a)``; the policy is
    ``softmax(Q)``. For each transition ``(s_t, a_{t+1}, s_{t+1})`` the implied reward is

        r_t = Q(s_t, a_{t+1}) - gamma * V(s_{t+1}),   V(s_{t+1}) := 0 if a_{t+1} == eos.

    Implemented (``c = chi2_coef``):

        L = - E_expert[r_t] + E_mix[V(s_t) - gamma V(s_{t+1})] + E_mix[r_t^2] / (4 c)

    * ``E_expert``: transitions whose action is an expert action (``batch.expert``: expert
      tokens and the corrective ``<bksp>`` after noise), uniform over transitions.
    * ``E_mix``, *offline* (``policy_logits is None``, the default): all valid transitions
      of the augmented batch, expert and noise ones; the noise transitions stand in for the
      policy's own mistakes.
    * ``E_mix``, *on-policy* (``policy_logits``/``policy_batch`` given: the model's logits on
      its own rollouts from ``sample_rollouts``): ``(1 - w) * E_aug + w * E_rollouts`` with
      ``w = policy_weight`` (0.5 = the mixture ``(rho_data + rho_theta) / 2``), where
      ``E_aug`` is the offline ``E_mix`` above and ``E_rollouts`` is uniform over the valid
      rollout transitions. When the rollouts are the augmented batch itself the loss is the
      offline one, whatever ``w``.

    Provenance, stated plainly. The paper's own equation (section 4 of arXiv:2306.05426)
    could not be read for this implementation: the stored copies of the paper that were
    reachable gave only its abstract and introduction, and no public code of the authors was
    found. So this is *not* verified to be the paper's equation. What it was checked against
    is the chi^2 IQ-Learn objective of Garg et al. 2021 as implemented in the official
    repository Div99/IQ-Learn, ``iq_learn/iq.py::iq_loss`` (commit 1f08bf3), with
    ``method.loss = "value"`` and ``method.regularize = True``: ``-mean_expert(Q - y) +
    mean_all(V - y) + mean_{expert ++ policy}((Q - y)^2) / (4 alpha)`` with
    ``y = (1 - done) * gamma * V(s')``. The form here is that one, with ``alpha = c``, done
    = "the action is eos", and these differences:

    1. IQ-Learn's policy rows are replay-buffer transitions of the learner; offline, this
       module uses the augmented batch's noise transitions instead (on-policy: rollouts).
       IQ-Learn's own offline setting (``method.loss = "value_expert"``, ``method.chi``)
       instead takes both the value and the chi^2 term over expert rows only.
    2. In the chi^2 term IQ-Learn scores a policy row at a freshly sampled action,
       ``Q(s, a ~ pi(s))``; here a rollout row is scored at the action actually taken (the
       same in expectation when ``eps = 0``).
    3. IQ-Learn mixes expert and policy rows 1:1 by concatenating equal batches; here the
       offline mixture weights transitions by their count in the augmented batch, the
       on-policy one by ``policy_weight``.
    4. Transitions are weighted uniformly, not by ``gamma^t`` (IQ-Learn's replay sampling
       does the same); the value term is the telescoped ``V(s) - gamma V(s')``, not
       ``(1 - gamma) E[V(s_0)]``.
    5. Terminal states (after ``eos``) have value 0; rows cut by padding or by a rollout's
       action budget bootstrap from their last state's V. ``gamma = 1`` is allowed (the
       undiscounted sequence setting); ``gamma < 1`` is for stability.
    6. Temperature 1 (``V = logsumexp Q``; IQ-Learn's soft-Q agent uses
       ``alpha_T * logsumexp(Q / alpha_T)``) and no target network: ``V(s')`` comes from
       the same forward pass and carries gradient.
    """
    _check_loss_inputs(logits, batch)
    if not 0.0 < gamma <= 1.0:
        raise ConfigError(f"gamma must be in (0, 1], got {gamma}")
    if chi2_coef <= 0:
        raise ConfigError(f"chi2_coef must be > 0, got {chi2_coef}")
    if (policy_logits is None) != (policy_batch is None):
        raise ConfigError("give both policy_logits and policy_batch, or neither")
    if not 0.0 <= policy_weight <= 1.0:
        raise ConfigError(f"policy_weight must be in [0, 1], got {policy_weight}")
    r, dv = _soft_bellman(logits.float(), batch.actions, eos_id, gamma)  # (B, T-1) each
    w_exp = batch.expert[:, 1:].to(r.dtype)  # (B, T-1)
    w_aug = batch.valid[:, 1:].to(r.dtype)  # (B, T-1)
    expert_term = _wmean(r, w_exp)
    value_term = _wmean(dv, w_aug)
    chi2_term = _wmean(r.square(), w_aug)
    if policy_logits is not None and policy_batch is not None:
        _check_policy_inputs(policy_logits, policy_batch, logits.shape[-1])
        r_p, dv_p = _soft_bellman(policy_logits.float(), policy_batch.actions, eos_id, gamma)
        w_pol = policy_batch.valid[:, 1:].to(r_p.dtype)  # (Bp, Tp-1)
        lam = policy_weight
        value_term = (1.0 - lam) * value_term + lam * _wmean(dv_p, w_pol)
        chi2_term = (1.0 - lam) * chi2_term + lam * _wmean(r_p.square(), w_pol)
    return -expert_term + value_term + chi2_term / (4.0 * chi2_coef)


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
    policy_logits: Tensor | None = None,
    policy_batch: RolloutBatch | None = None,
    policy_weight: float = 0.5,
) -> Tensor:
    """BC for ``step < warmup_steps``, then ``(1 - alpha) * BC + alpha * SequenceMatch``
    (on-policy when ``policy_logits``/``policy_batch`` are given; ignored during warm-up)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    bc = bc_loss(logits, batch)
    if step < warmup_steps or alpha == 0.0:
        return bc
    sm = sequencematch_loss(
        logits,
        batch,
        eos_id=eos_id,
        gamma=gamma,
        chi2_coef=chi2_coef,
        policy_logits=policy_logits,
        policy_batch=policy_batch,
        policy_weight=policy_weight,
    )
    return (1.0 - alpha) * bc + alpha * sm


# ----------------------------------------------------------------------------------
# Sampling (with injected noise) and on-policy rollouts
# ----------------------------------------------------------------------------------


@torch.no_grad()
def _sample_actions(
    model: Transformer,
    prompts: Tensor,
    *,
    bksp_id: int,
    eos_id: int,
    noise_ids: Sequence[int],
    eps: float,
    max_actions: int,
    generator: torch.Generator | None,
) -> list[list[int]]:
    """Raw action rows (``<bksp>`` kept) of ancestral sampling with noise; see
    ``sample_with_noise``. With no ``noise_ids`` (only allowed for ``eps == 0``) the noise
    draws are skipped; otherwise the generator is consumed exactly as before."""
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(f"eps must be in [0, 1], got {eps}")
    if prompts.ndim != 2 or prompts.shape[1] != 1:
        raise InputError(f"prompts must be (B, 1), got {tuple(prompts.shape)}")
    if bksp_id in noise_ids:
        raise ConfigError("noise_ids must not contain bksp_id")
    if eps > 0 and not noise_ids:
        raise ConfigError("eps > 0 needs noise_ids")
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
        if len(noise):
            flip = torch.rand(B, generator=generator) < eps
            repl = noise[torch.randint(0, len(noise), (B,), generator=generator)]
            acts = torch.where(flip, repl, acts)  # (B,)
        for b, a in enumerate(acts.tolist()):
            if done[b]:
                continue
            rows[b].append(a)
            depth[b] += -1 if a == bksp_id else 1
            done[b] = a == eos_id
    return rows


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
    never sampled (its probability is set to 0 at depth 1). Returns the final token lists
    (backspaces applied, ``eos`` kept when produced), one full forward pass per step (no
    cache)."""
    rows = _sample_actions(
        model,
        prompts,
        bksp_id=bksp_id,
        eos_id=eos_id,
        noise_ids=noise_ids,
        eps=eps,
        max_actions=max_actions,
        generator=generator,
    )
    return [apply_backspaces(r, bksp_id) for r in rows]


def sample_rollouts(
    model: Transformer,
    prompts: Tensor,
    *,
    bksp_id: int,
    eos_id: int,
    max_actions: int,
    noise_ids: Sequence[int] = (),
    eps: float = 0.0,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> RolloutBatch:
    """On-policy rollouts for the policy-occupancy term of ``sequencematch_loss``.

    Samples from ``softmax(logits)`` over all actions, ``<bksp>`` included, from ``prompts``
    (B, 1), up to ``max_actions`` actions or ``eos``; ``eps > 0`` injects noise tokens as in
    ``sample_with_noise``. Sampling runs without gradients; run ``backtrack_logits`` on
    ``actions`` (with gradients) for the loss. Rows are padded with ``pad_id`` (which must
    not be ``bksp_id``; padding is masked out by ``valid``)."""
    if pad_id == bksp_id or pad_id < 0:
        raise ConfigError(f"pad_id must be >= 0 and differ from bksp_id, got {pad_id}")
    if max_actions < 1:
        raise ConfigError(f"max_actions must be >= 1, got {max_actions}")
    rows = _sample_actions(
        model,
        prompts,
        bksp_id=bksp_id,
        eos_id=eos_id,
        noise_ids=noise_ids,
        eps=eps,
        max_actions=max_actions,
        generator=generator,
    )
    T = max(len(r) for r in rows)
    actions = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
    valid = torch.zeros(len(rows), T, dtype=torch.bool)  # (B, T)
    for i, r in enumerate(rows):
        actions[i, : len(r)] = torch.tensor(r)
        valid[i, : len(r)] = True
    return RolloutBatch(actions=actions.to(prompts.device), valid=valid.to(prompts.device))


__all__ = [
    "AugmentedBatch",
    "BacktrackLayout",
    "RolloutBatch",
    "apply_backspaces",
    "augment_with_backspaces",
    "backtrack_layout",
    "backtrack_logits",
    "bc_loss",
    "mixed_loss",
    "sample_rollouts",
    "sample_with_noise",
    "sequencematch_loss",
]
