"""Tests of ar_text.objectives (Wang et al. 2022, arXiv:2204.05832)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ar_core import Transformer, TransformerConfig
from ar_core.errors import InputError
from ar_text import objectives as obj

VOCAB = 64
SENTINELS = list(range(VOCAB - 40, VOCAB))  # reserved ids 24..63; sequences use 0..23


def tiny_model(backend: str = "math", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=VOCAB,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=128,
        attention_backend=backend,
    )
    return Transformer(cfg).eval()


def random_tokens(B: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 24, (B, T), generator=g)


# -- masks ------------------------------------------------------------------------------


def test_nd_mask_is_causal_or_input_block_and_padding() -> None:
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    prefix = torch.tensor([3, 2])
    dense = obj.non_causal_decoder_mask(prefix, valid).to_dense(6, 6, batch_size=2)
    q, kv = torch.arange(6)[:, None], torch.arange(6)[None, :]
    for b in range(2):
        n = int(prefix[b])
        ref = ((kv <= q) | ((q < n) & (kv < n))) & valid[b][None, :]
        assert torch.equal(dense[b], ref)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_nd_with_empty_prefix_equals_cd_exactly(backend: str) -> None:
    model = tiny_model(backend)
    tokens = random_tokens(3, 20, seed=1)
    lengths = torch.tensor([20, 13, 7])
    valid = torch.arange(20)[None, :] < lengths[:, None]
    with torch.no_grad():
        cd = model(tokens, mask=obj.causal_decoder_mask(valid)).logits
        nd = model(
            tokens, mask=obj.non_causal_decoder_mask(torch.zeros(3, dtype=torch.long), valid)
        ).logits
        plain = model(tokens).logits  # ar_core's default causal mask (fast path)
    assert cd.dtype == torch.float32
    assert torch.equal(nd, cd)
    for b in range(3):  # padding changes nothing at the real positions
        n = int(lengths[b])
        assert (
            torch.equal(cd[b, :n], plain[b, :n])
            if backend == "math"
            else torch.allclose(cd[b, :n], plain[b, :n], atol=1e-5)
        )
    # a non-empty prefix does change the logits (the check can fail)
    nd3 = model(tokens, mask=obj.non_causal_decoder_mask(torch.full((3,), 3), valid)).logits
    assert not torch.allclose(nd3[:, :2], cd[:, :2])


def test_packed_nd_equals_separate_documents() -> None:
    model = tiny_model("math")
    a, c = random_tokens(1, 9, seed=2)[0], random_tokens(1, 7, seed=3)[0]
    packed = torch.cat([a, c, torch.zeros(4, dtype=torch.long)])[None]  # (1, 20)
    doc = torch.tensor([[0] * 9 + [1] * 7 + [2] * 4])
    is_input = torch.zeros(1, 20, dtype=torch.bool)
    is_input[0, :4] = True  # document 0: prefix of 4
    is_input[0, 9:11] = True  # document 1: prefix of 2
    valid = torch.arange(20)[None] < 16
    mask = obj.packed_non_causal_decoder_mask(doc, is_input, valid)
    with torch.no_grad():
        out = model(packed, positions=obj.document_positions(doc), mask=mask).logits
        ref_a = model(
            a[None],
            mask=obj.non_causal_decoder_mask(torch.tensor([4]), torch.ones(1, 9, dtype=torch.bool)),
        ).logits
        ref_c = model(
            c[None],
            mask=obj.non_causal_decoder_mask(torch.tensor([2]), torch.ones(1, 7, dtype=torch.bool)),
        ).logits
    torch.testing.assert_close(out[0, :9], ref_a[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, 9:16], ref_c[0], rtol=0, atol=1e-6)


# -- prefix LM ---------------------------------------------------------------------------


def test_prefix_lm_targets_never_see_future_targets() -> None:
    model = tiny_model("sdpa")
    T, n = 16, 6
    tokens = random_tokens(1, T, seed=4)
    batch = obj.prefix_lm_batch(tokens, prefix_lens=torch.tensor([n]))
    assert (batch.labels[0, : n - 1] == obj.IGNORE).all()
    assert torch.equal(batch.labels[0, n - 1 : T - 1], tokens[0, n:])
    with torch.no_grad():
        base = model(batch.tokens, mask=batch.mask).logits[0]
        for t in range(n, T):  # change target token t: logits before t are untouched
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 24
            out = model(changed, mask=batch.mask).logits[0]
            assert torch.equal(out[:t], base[:t])
            assert not torch.allclose(out[t:], base[t:])
        # changing an input-prefix token can change every position, position 0 included
        changed = tokens.clone()
        changed[0, n - 1] = (changed[0, n - 1] + 1) % 24
        out = model(changed, mask=batch.mask).logits[0]
        assert (out - base).abs().amax(dim=-1).gt(1e-6).all()


def test_prefix_lm_split_is_uniform_and_loss_on_targets_only() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = random_tokens(4000, 9, seed=5)
    lengths = torch.full((4000,), 9)
    batch = obj.prefix_lm_batch(tokens, lengths, generator=g)
    first_label = (batch.labels != obj.IGNORE).float().argmax(dim=1) + 1  # = split point
    counts = torch.bincount(first_label, minlength=9)[1:9].float()  # splits 1..8
    # uniform over 8 values: chi^2 with 7 dof, 99.9% quantile 24.3
    chi2 = ((counts - 500.0) ** 2 / 500.0).sum()
    assert chi2 < 24.3, counts


def reference_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of -log p(label) over the labelled positions, one position at a time."""
    terms = [
        -float(torch.log_softmax(logits[b, t].double(), -1)[labels[b, t]])
        for b in range(labels.shape[0])
        for t in range(labels.shape[1])
        if labels[b, t] != obj.IGNORE
    ]
    assert terms, "no labelled position"
    return sum(terms) / len(terms)


def test_prefix_lm_loss_is_the_mean_over_the_targets() -> None:
    model = tiny_model("sdpa")
    batch = obj.prefix_lm_batch(random_tokens(2, 12, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(batch.tokens, positions=batch.positions, mask=batch.mask).logits
    loss = obj.lm_loss(logits, batch.labels)
    assert float(loss) == pytest.approx(reference_lm_loss(logits, batch.labels), abs=1e-5)
    # an untrained model is close to uniform over the vocabulary (measured 4.130 vs 4.159)
    assert abs(float(loss) - math.log(VOCAB)) < 0.1


# -- span corruption --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    seq=st.lists(st.integers(0, 23), min_size=2, max_size=200),
    seed=st.integers(0, 2**31 - 1),
    density=st.sampled_from([0.15, 0.3, 0.5]),
    span=st.sampled_from([1.0, 3.0, 5.0]),
)
def test_span_corruption_inverts_exactly(
    seq: list[int], seed: int, density: float, span: float
) -> None:
    tokens = torch.tensor(seq)
    g = torch.Generator().manual_seed(seed)
    inputs, targets = obj.span_corrupt(
        tokens, SENTINELS, g, noise_density=density, mean_span_length=span
    )
    assert inputs.numel() + targets.numel() < tokens.numel() + 2 * len(SENTINELS)
    assert int(targets[0]) in SENTINELS
    assert torch.equal(obj.span_uncorrupt(inputs, targets, SENTINELS), tokens)


def test_span_corruption_output_format() -> None:
    tokens = torch.arange(20)
    inputs, targets = obj.span_corrupt(tokens, SENTINELS, torch.Generator().manual_seed(3))
    n_spans = int(torch.isin(inputs, torch.tensor(SENTINELS)).sum())
    assert n_spans == 1  # round(20 * 0.15) = 3 noise tokens, round(3 / 3) = 1 span
    assert inputs.numel() == 20 - 3 + 1 and targets.numel() == 3 + 1
    s = int(targets[0])
    pos = int((inputs == s).nonzero()[0, 0])
    assert torch.equal(targets[1:], tokens[pos : pos + 3])


def test_span_corruption_rejects_sentinels_in_tokens() -> None:
    with pytest.raises(InputError):
        obj.span_corrupt(torch.tensor([1, 2, SENTINELS[0], 3]), SENTINELS)


@pytest.mark.parametrize("density,span", [(0.15, 3.0), (0.3, 5.0)])
def test_span_corruption_statistics(density: float, span: float) -> None:
    """Pooled over 2000 sequences of random lengths 20..300 (seed 0): the noise density
    is within 0.005 of ``density`` and the mean span length within 3% of ``span``; the
    positions of the spans are spread over the sequence (the noise rate of each decile of
    positions, after the first, is within 0.03 of ``density``)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 301, (2000,), generator=g)
    noise_total = spans_total = tokens_total = 0
    deciles = torch.zeros(10)
    decile_counts = torch.zeros(10)
    for n in lengths.tolist():
        m = obj.noise_mask(n, noise_density=density, mean_span_length=span, generator=g)
        noise_total += int(m.sum())
        spans_total += int((m & ~torch.cat([m.new_zeros(1), m[:-1]])).sum())
        tokens_total += n
        dec = (torch.arange(n) * 10) // n
        deciles.index_add_(0, dec, m.float())
        decile_counts.index_add_(0, dec, torch.ones(n))
    assert abs(noise_total / tokens_total - density) < 0.005
    assert abs(noise_total / spans_total - span) < 0.03 * span
    rate = deciles / decile_counts
    assert (rate[1:9] - density).abs().max() < 0.03, rate
    assert rate[9] > density  # the final noise span


# -- adaptation --------------------------------------------------------------------------


def test_mlm_adaptation_batch_is_nd_over_corrupted_inputs() -> None:
    tokens = random_tokens(3, 30, seed=7)
    lengths = torch.tensor([30, 25, 12])
    g = torch.Generator().manual_seed(0)
    batch = obj.mlm_adaptation_batch(tokens, lengths, SENTINELS, pad_id=0, generator=g)
    g = torch.Generator().manual_seed(0)
    for b in range(3):
        inputs, targets = obj.span_corrupt(tokens[b, : int(lengths[b])], SENTINELS, g)
        n_in, n_t = inputs.numel(), targets.numel()
        assert torch.equal(batch.tokens[b, :n_in], inputs)
        assert torch.equal(batch.tokens[b, n_in : n_in + n_t], targets)
        labelled = (batch.labels[b] != obj.IGNORE).nonzero().squeeze(1)
        assert labelled.tolist() == list(range(n_in - 1, n_in + n_t - 1))  # loss on targets only
        dense = batch.mask.to_dense(batch.tokens.shape[1], batch.tokens.shape[1], batch_size=3)[b]
        assert dense[0, n_in - 1] and not dense[0, n_in]  # bidirectional over the inputs only
    model = tiny_model("sdpa")
    with torch.no_grad():
        logits = model(batch.tokens, mask=batch.mask).logits
    loss = obj.lm_loss(logits, batch.labels)
    assert float(loss) == pytest.approx(reference_lm_loss(logits, batch.labels), abs=1e-5)


def test_lm_adaptation_batch_is_causal_full_lm() -> None:
    tokens = random_tokens(2, 10, seed=8)
    batch = obj.lm_adaptation_batch(tokens, torch.tensor([10, 6]))
    dense = batch.mask.to_dense(10, 10, batch_size=2)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    assert torch.equal(dense[0], causal)
    assert torch.equal(dense[1], causal & (torch.arange(10) < 6)[None, :])
    assert torch.equal(batch.labels[0, :9], tokens[0, 1:]) and batch.labels[0, 9] == obj.IGNORE
    assert (batch.labels[1, 5:] == obj.IGNORE).all() and torch.equal(
        batch.labels[1, :5], tokens[1, 1:6]
    )
