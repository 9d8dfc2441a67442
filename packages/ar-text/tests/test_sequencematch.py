"""Tests of ar_text.sequencematch (Cundy & Ermon, ICLR 2024, arXiv:2306.05426)."""

from __future__ import annotations

import pytest
import torch

from ar_core import Transformer, TransformerConfig
from ar_core.errors import ConfigError, InputError
from ar_text import sequencematch as sm
from ar_text.recipes.sequencematch import DYCK_BOS as D_BOS
from ar_text.recipes.sequencematch import DYCK_EOS as D_EOS
from ar_text.recipes.sequencematch import (
    SequenceMatchConfig,
    dyck2,
    dyck2_valid,
    sample_actions,
    train_method,
    z_test_greater,
)

torch.set_num_threads(1)

VOCAB = 16
BKSP = VOCAB - 1  # the last action id is <bksp>


def tiny_model(seed: int = 0, vocab: int = VOCAB) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64
    )
    return Transformer(cfg).eval()


# -- apply_backspaces / layout ------------------------------------------------------------


def test_apply_backspaces() -> None:
    assert sm.apply_backspaces([1, 2, BKSP, 3], BKSP) == [1, 3]
    assert sm.apply_backspaces([1, 5, 6, BKSP, BKSP, 3], BKSP) == [1, 3]
    assert sm.apply_backspaces([1, 5, BKSP, 6, 7, BKSP, BKSP, 3, BKSP], BKSP) == [1]
    assert sm.apply_backspaces([BKSP, 2], BKSP) == [2]  # no-op on an empty stack


PATTERNS = [
    [1, 2, 9, BKSP, 3, 4],  # x n <bksp> y
    [1, 2, 9, 8, BKSP, BKSP, 3],  # nested: a n1 n2 <bksp> <bksp> b
    [1, 9, BKSP, 2, 8, BKSP, 7, 6, BKSP, BKSP, 3],
    [1, 2, 3, BKSP, BKSP, 9, 8, 7, BKSP, BKSP, BKSP, 4, 5],  # deletes expert tokens too
    [1, 2, 3, 4, 5],  # no backspace: plain causal
]


@pytest.mark.parametrize("actions", PATTERNS)
def test_layout_logits_equal_clean_prefix_logits(actions: list[int]) -> None:
    model = tiny_model()
    logits = sm.backtrack_logits(model, torch.tensor([actions]), BKSP)[0]  # (T, A)
    for t in range(len(actions)):
        state = sm.apply_backspaces(actions[: t + 1], BKSP)
        ref = model(torch.tensor([state])).logits[0, -1]  # reference: the clean state
        torch.testing.assert_close(logits[t], ref, rtol=1e-5, atol=1e-5)


def test_layout_batched_rows_of_different_patterns() -> None:
    model = tiny_model(seed=1)
    rows = [PATTERNS[0] + [5] * 5, PATTERNS[2]]
    acts = torch.tensor(rows)
    logits = sm.backtrack_logits(model, acts, BKSP)  # (2, T, A)
    for b, row in enumerate(rows):
        for t in range(len(row)):
            state = sm.apply_backspaces(row[: t + 1], BKSP)
            ref = model(torch.tensor([state])).logits[0, -1]
            torch.testing.assert_close(logits[b, t], ref, rtol=1e-5, atol=1e-5)


def test_layout_hides_deleted_and_backspace_positions() -> None:
    lay = sm.backtrack_layout(torch.tensor([[1, 2, 9, 8, BKSP, BKSP, 3]]), BKSP)
    assert lay.positions[0].tolist() == [0, 1, 2, 3, 2, 1, 2]
    assert lay.tokens[0].tolist() == [1, 2, 9, 8, 9, 2, 3]
    assert lay.visible[0, 6].nonzero().flatten().tolist() == [0, 1, 6]
    dense = lay.mask.to_dense(7, 7)
    assert torch.equal(dense, lay.visible)


# -- augmentation -------------------------------------------------------------------------


def test_augmentation_applies_back_to_the_expert_sequence() -> None:
    g = torch.Generator().manual_seed(0)
    seqs = [[1, 2, 3, 4, 5, 6], [1, 7], [1, 3, 3, 3]]
    batch = sm.augment_with_backspaces(
        seqs, bksp_id=BKSP, noise_ids=[8, 9, 10], p_noise=0.7, max_noise=3, generator=g
    )
    assert int((batch.actions == BKSP).sum()) > 0
    for b, seq in enumerate(seqs):
        row = batch.actions[b][batch.valid[b]].tolist()
        assert sm.apply_backspaces(row, BKSP) == seq
        # the expert flags mark exactly the non-noise actions after the prompt
        noise = [i for i, a in enumerate(row) if a in (8, 9, 10)]
        flags = batch.expert[b][batch.valid[b]]
        assert flags[0] == 0 and all(flags[i] == 0 for i in noise)
        assert int(flags.sum()) == len(row) - 1 - len(noise)


# -- objective ----------------------------------------------------------------------------


def _batch() -> sm.AugmentedBatch:
    g = torch.Generator().manual_seed(1)
    seqs = [[1, 2, 3, 4, 14], [1, 5, 6, 14], [1, 7, 14]]
    return sm.augment_with_backspaces(
        seqs, bksp_id=BKSP, noise_ids=[8, 9], p_noise=0.5, max_noise=2, generator=g
    )


@pytest.mark.parametrize("step", [0, 10])
def test_mixed_loss_is_bc_then_the_mixture_and_differentiable(step: int) -> None:
    model = tiny_model().train()
    batch = _batch()
    logits = sm.backtrack_logits(model, batch.actions, BKSP)
    loss = sm.mixed_loss(logits, batch, step=step, warmup_steps=5, alpha=0.5, eos_id=14)
    bc = sm.bc_loss(logits, batch)
    if step < 5:  # the warm-up: BC alone
        assert torch.equal(loss, bc)
    else:
        smatch = sm.sequencematch_loss(logits, batch, eos_id=14)
        assert torch.equal(loss, 0.5 * bc + 0.5 * smatch) and not torch.equal(loss, bc)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_sequencematch_loss_matches_reference_loop() -> None:
    batch = _batch()
    logits = torch.randn(*batch.actions.shape, VOCAB, generator=torch.Generator().manual_seed(3))
    got = sm.sequencematch_loss(logits, batch, eos_id=14, gamma=0.9, chi2_coef=0.5)
    e_num = e_den = m_val = m_sq = m_den = 0.0
    for b in range(batch.actions.shape[0]):
        for t in range(batch.actions.shape[1] - 1):
            if not batch.valid[b, t + 1]:
                continue
            a = int(batch.actions[b, t + 1])
            v_t = float(torch.logsumexp(logits[b, t], -1))
            v_n = 0.0 if a == 14 else float(torch.logsumexp(logits[b, t + 1], -1))
            r = float(logits[b, t, a]) - 0.9 * v_n
            w = float(batch.expert[b, t + 1])
            e_num, e_den = e_num + w * r, e_den + w
            m_val, m_sq, m_den = m_val + v_t - 0.9 * v_n, m_sq + r * r, m_den + 1
    ref = -e_num / e_den + m_val / m_den + m_sq / m_den / 2.0
    assert abs(float(got) - ref) < 1e-4


# -- on-policy term -----------------------------------------------------------------------

# hand-made rollouts (A = VOCAB actions, eos 14, pad 0): one ends in eos and is padded, one
# uses backspaces and ends in eos, one is cut by the action budget (no eos, no padding)
ROLL_ROWS = [
    [1, 2, 3, 14, 0, 0, 0, 0],
    [1, 9, BKSP, 4, 8, BKSP, 5, 14],
    [1, 6, 7, BKSP, 7, 6, 5, 4],
]


def _rollouts() -> sm.RolloutBatch:
    acts = torch.tensor(ROLL_ROWS)
    valid = torch.ones_like(acts, dtype=torch.bool)
    valid[0, 4:] = False
    return sm.RolloutBatch(actions=acts, valid=valid)


@pytest.mark.parametrize("weight", [0.3, 0.5, 1.0])
def test_onpolicy_loss_reduces_to_offline_when_rollouts_are_the_data(weight: float) -> None:
    batch = _batch()
    logits = torch.randn(*batch.actions.shape, VOCAB, generator=torch.Generator().manual_seed(4))
    offline = sm.sequencematch_loss(logits, batch, eos_id=14, gamma=0.9)
    same = sm.RolloutBatch(actions=batch.actions, valid=batch.valid)
    online = sm.sequencematch_loss(
        logits,
        batch,
        eos_id=14,
        gamma=0.9,
        policy_logits=logits,
        policy_batch=same,
        policy_weight=weight,
    )
    torch.testing.assert_close(online, offline, rtol=1e-6, atol=1e-6)


def test_onpolicy_loss_matches_reference_loop() -> None:
    batch, roll = _batch(), _rollouts()
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(*batch.actions.shape, VOCAB, generator=g)
    plog = torch.randn(*roll.actions.shape, VOCAB, generator=g)
    gamma, c, w = 0.9, 0.25, 0.4
    got = sm.sequencematch_loss(
        logits,
        batch,
        eos_id=14,
        gamma=gamma,
        chi2_coef=c,
        policy_logits=plog,
        policy_batch=roll,
        policy_weight=w,
    )

    def terms(lg: torch.Tensor, acts: torch.Tensor, valid: torch.Tensor) -> list[tuple]:
        out = []
        for b in range(acts.shape[0]):
            for t in range(acts.shape[1] - 1):
                if not valid[b, t + 1]:
                    continue
                a = int(acts[b, t + 1])
                v_t = float(torch.logsumexp(lg[b, t], -1))
                v_n = 0.0 if a == 14 else gamma * float(torch.logsumexp(lg[b, t + 1], -1))
                out.append((b, t, float(lg[b, t, a]) - v_n, v_t - v_n))
        return out

    data = terms(logits, batch.actions, batch.valid)
    pol = terms(plog, roll.actions, roll.valid)
    wts = [float(batch.expert[b, t + 1]) for b, t, _, _ in data]
    expert = sum(wt * r for wt, (_, _, r, _) in zip(wts, data)) / sum(wts)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    value = (1 - w) * mean([dv for *_, dv in data]) + w * mean([dv for *_, dv in pol])
    sq = (1 - w) * mean([r * r for _, _, r, _ in data]) + w * mean([r * r for _, _, r, _ in pol])
    ref = -expert + value + sq / (4 * c)
    assert abs(float(got) - ref) < 1e-4


def test_onpolicy_gradient_only_where_the_rollouts_define_the_loss() -> None:
    """d loss / d policy_logits is zero on padding and at a terminal (eos) state, whose value
    is 0 by definition, and non-zero at every other rollout position."""
    batch, roll = _batch(), _rollouts()
    logits = torch.randn(*batch.actions.shape, VOCAB, generator=torch.Generator().manual_seed(6))
    plog = torch.randn(*roll.actions.shape, VOCAB, generator=torch.Generator().manual_seed(7))
    plog.requires_grad_(True)
    loss = sm.sequencematch_loss(logits, batch, eos_id=14, policy_logits=plog, policy_batch=roll)
    loss.backward()
    assert plog.grad is not None
    touched = plog.grad.abs().sum(-1) > 0  # (B, T)
    expect = roll.valid & (roll.actions != 14)
    assert torch.equal(touched, expect)


def test_sample_rollouts_rows_are_valid_action_sequences() -> None:
    model = tiny_model(seed=2)
    prompts = torch.tensor([[1], [2], [3], [1], [2], [3]])
    kw = dict(bksp_id=BKSP, eos_id=14, noise_ids=[8, 9], eps=0.3, max_actions=12)
    roll = sm.sample_rollouts(
        model, prompts, pad_id=0, generator=torch.Generator().manual_seed(0), **kw
    )
    final = sm.sample_with_noise(model, prompts, generator=torch.Generator().manual_seed(0), **kw)
    sm.backtrack_layout(roll.actions, BKSP)  # no row deletes its prompt
    for b in range(len(prompts)):
        n = int(roll.valid[b].sum())
        assert roll.valid[b, :n].all() and not roll.valid[b, n:].any()  # one valid prefix
        assert (roll.actions[b, n:] == 0).all()  # then padding
        row = roll.actions[b, :n].tolist()
        assert row[0] == int(prompts[b, 0])
        assert row[-1] == 14 or n == 13  # ends at eos or at the action budget
        assert 14 not in row[:-1]
        assert sm.apply_backspaces(row, BKSP) == final[b]  # same draws as sample_with_noise
    roll1 = sm.sample_rollouts(
        model,
        prompts,
        pad_id=0,
        generator=torch.Generator().manual_seed(0),
        **{**kw, "eps": 1.0},
    )
    assert set(roll1.actions[roll1.valid].tolist()) <= {1, 2, 3, 8, 9}  # prompts + noise only


def test_onpolicy_mixed_loss_trains_through_rollouts() -> None:
    model = tiny_model(seed=3).train()
    batch = _batch()
    roll = sm.sample_rollouts(
        model,
        torch.ones(4, 1, dtype=torch.long),
        bksp_id=BKSP,
        eos_id=14,
        max_actions=8,
        generator=torch.Generator().manual_seed(1),
    )
    logits = sm.backtrack_logits(model, batch.actions, BKSP)
    plog = sm.backtrack_logits(model, roll.actions, BKSP)
    loss = sm.mixed_loss(
        logits,
        batch,
        step=10,
        warmup_steps=5,
        alpha=0.5,
        eos_id=14,
        policy_logits=plog,
        policy_batch=roll,
    )
    off = sm.mixed_loss(logits, batch, step=10, warmup_steps=5, alpha=0.5, eos_id=14)
    assert torch.isfinite(loss) and not torch.allclose(loss, off)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# -- bad inputs ---------------------------------------------------------------------------


def test_bad_inputs_raise() -> None:
    with pytest.raises(InputError):
        sm.backtrack_layout(torch.tensor([[BKSP, 1]]), BKSP)
    with pytest.raises(InputError):
        sm.backtrack_layout(torch.tensor([[1, 2, BKSP, BKSP]]), BKSP)
    with pytest.raises(InputError):
        sm.backtrack_layout(torch.tensor([1, 2]), BKSP)
    with pytest.raises(InputError):
        sm.backtrack_layout(torch.tensor([[1.0, 2.0]]), BKSP)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        sm.augment_with_backspaces([[1, 2]], bksp_id=BKSP, noise_ids=[BKSP], p_noise=0.5)
    with pytest.raises(InputError):
        sm.augment_with_backspaces([[1, BKSP]], bksp_id=BKSP, noise_ids=[3], p_noise=0.5)
    batch = _batch()
    with pytest.raises(InputError):
        sm.sequencematch_loss(torch.zeros(1, 2, VOCAB), batch, eos_id=14)
    logits = torch.zeros(*batch.actions.shape, VOCAB)
    with pytest.raises(ConfigError):
        sm.sequencematch_loss(logits, batch, eos_id=14, gamma=0.0)
    with pytest.raises(ConfigError):
        sm.mixed_loss(logits, batch, step=0, warmup_steps=0, alpha=1.5, eos_id=14)
    roll = _rollouts()
    plog = torch.zeros(*roll.actions.shape, VOCAB)
    with pytest.raises(ConfigError):
        sm.sequencematch_loss(logits, batch, eos_id=14, policy_logits=plog)
    with pytest.raises(ConfigError):
        sm.sequencematch_loss(
            logits, batch, eos_id=14, policy_logits=plog, policy_batch=roll, policy_weight=1.5
        )
    with pytest.raises(InputError):
        sm.sequencematch_loss(
            logits, batch, eos_id=14, policy_logits=plog[:, :-1], policy_batch=roll
        )
    with pytest.raises(ConfigError):
        sm.sample_rollouts(
            tiny_model(),
            torch.ones(1, 1, dtype=torch.long),
            bksp_id=BKSP,
            eos_id=14,
            max_actions=4,
            pad_id=BKSP,
        )
    with pytest.raises(ConfigError):
        sm.sample_rollouts(
            tiny_model(),
            torch.ones(1, 1, dtype=torch.long),
            bksp_id=BKSP,
            eos_id=14,
            max_actions=4,
            eps=0.5,
        )


# -- slow: validity under injected noise on Dyck-2 ----------------------------------------


def test_dyck2_checker() -> None:
    g = torch.Generator().manual_seed(0)
    assert all(dyck2_valid(dyck2(g)) for _ in range(50))
    assert not dyck2_valid([D_BOS, 2, 5, D_EOS]) and not dyck2_valid([D_BOS, 2, D_EOS])


def _train_dyck(kind: str, steps: int, seed: int) -> Transformer:
    """One method trained by the ``text-sequencematch`` recipe's loop (its defaults: batch
    32, lr 3e-3, 100 BC warm-up steps, then alpha 0.2; on-policy: 32 rollouts a step)."""
    method = {"mle": "mle", "sm": "sequencematch", "sm_onpolicy": "sequencematch-onpolicy"}[kind]
    config = SequenceMatchConfig(steps=steps, seed=seed, methods=[method], progress_bar=False)
    model, _, _ = train_method(method, config, lambda _: None)
    return model


def _validity(model: Transformer, eps: float, n: int = 200, seed: int = 123) -> float:
    _, words = sample_actions(model, n, SequenceMatchConfig(eps=eps, n_eval=n, eval_seed=seed))
    return sum(map(dyck2_valid, words)) / n


def _z(p_sm: float, p_mle: float) -> float:
    test = z_test_greater(p_sm, p_mle, 200)
    assert test is not None, (p_sm, p_mle)
    return test[0]


@pytest.mark.slow
def test_sequencematch_beats_mle_under_sampling_noise() -> None:
    """300 steps each, seed 0, eps = 0.1, 200 samples. One-sided two-proportion z-test at
    the 1% level (z > 2.33): SequenceMatch's validity exceeds MLE's."""
    mle, smm = _train_dyck("mle", 300, 0), _train_dyck("sm", 300, 0)
    p_mle, p_sm = _validity(mle, 0.1), _validity(smm, 0.1)
    print(f"validity eps=0.1: mle {p_mle:.3f}, sequencematch {p_sm:.3f}")
    z = _z(p_sm, p_mle)
    assert z > 2.33, (p_mle, p_sm, z)


@pytest.mark.slow
def test_onpolicy_sequencematch_beats_mle_under_sampling_noise() -> None:
    """As above, with the policy-occupancy term on the model's own rollouts (32 a step after
    the 100 warm-up steps, no noise in them). Same z-test against MLE (measured: MLE 0.575,
    on-policy 0.855). Only the claim over MLE is asserted: plain BC (``bc_loss``) on the
    same augmented data scored higher than both SequenceMatch variants at seed 0 (BC 0.945,
    offline 0.895, on-policy 0.855) and on average over seeds 0-4."""
    mle, smo = _train_dyck("mle", 300, 0), _train_dyck("sm_onpolicy", 300, 0)
    p_mle, p_sm = _validity(mle, 0.1), _validity(smo, 0.1)
    print(f"validity eps=0.1: mle {p_mle:.3f}, sequencematch on-policy {p_sm:.3f}")
    z = _z(p_sm, p_mle)
    assert z > 2.33, (p_mle, p_sm, z)
