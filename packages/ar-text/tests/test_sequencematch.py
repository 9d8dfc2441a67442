"""Tests of ar_text.sequencematch (Cundy & Ermon, ICLR 2024, arXiv:2306.05426)."""

from __future__ import annotations

import pytest
import torch

from ar_core import Transformer, TransformerConfig
from ar_core.errors import ConfigError, InputError
from ar_text import sequencematch as sm

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
def test_loss_finite_and_differentiable(step: int) -> None:
    model = tiny_model().train()
    batch = _batch()
    logits = sm.backtrack_logits(model, batch.actions, BKSP)
    loss = sm.mixed_loss(logits, batch, step=step, warmup_steps=5, alpha=0.5, eos_id=14)
    assert torch.isfinite(loss)
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
