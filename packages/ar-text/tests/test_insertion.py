"""Insertion language models (Patel et al. 2025): targets, loss, oracle sampling, star graph."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig
from ar_text.insertion import (
    InsertionModel,
    drop_tokens,
    ilm_loss,
    insert_until_stop,
)
from ar_text.stargraph import (
    StarGraph,
    ar_path_accuracy,
    ar_trainer,
    ilm_path_accuracy,
    ilm_trainer,
    train_ar,
    train_ilm,
)

torch.set_num_threads(1)

V, CLS, PAD = 8, 6, 7  # ids 0..5 are content tokens


def _random_batch(gen: torch.Generator, B: int, N: int, n_tok: int) -> tuple[Tensor, Tensor]:
    lengths = torch.randint(0, N + 1, (B,), generator=gen)
    tokens = torch.randint(0, n_tok, (B, N), generator=gen)
    tokens[torch.arange(N)[None, :] >= lengths[:, None]] = PAD
    return tokens, lengths


def test_targets_sum_to_one_and_stop_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens, lengths = _random_batch(gen, 256, 9, 6)
    b = drop_tokens(tokens, lengths, vocab_size=V, cls_id=CLS, pad_id=PAD, generator=gen)
    n_dropped = lengths + 1 - b.lengths  # (B,)
    sums = b.targets.sum((1, 2))
    assert torch.equal(b.stop, (n_dropped == 0).float())
    assert torch.allclose(sums[n_dropped > 0], torch.ones(int((n_dropped > 0).sum())))
    assert bool((sums[n_dropped == 0] == 0).all())
    # both labels occur, and k covers its range 0..len
    assert 0 < int(b.stop.sum()) < 256 and int(n_dropped.max()) == 9
    # mass only on valid slots: gap g <= number of kept tokens
    slot = torch.arange(10)[None, :, None]
    assert bool((b.targets * (slot >= b.lengths[:, None, None])).eq(0).all())
    assert bool((b.tokens[:, 0] == CLS).all())


def test_targets_match_reference_on_distinct_tokens() -> None:
    """With distinct tokens the dropped positions are identifiable: compare with a loop."""
    gen = torch.Generator().manual_seed(1)
    B, N, vocab = 64, 6, 20
    tokens = torch.stack([torch.randperm(18, generator=gen)[:N] for _ in range(B)])
    lengths = torch.full((B,), N)
    b = drop_tokens(tokens, lengths, vocab_size=vocab, cls_id=18, pad_id=19, generator=gen)
    for r in range(B):
        kept = b.tokens[r, 1 : int(b.lengths[r])].tolist()
        dropped = [t for t in tokens[r].tolist() if t not in kept]
        expect = torch.zeros(N + 1, vocab)
        pos = 0
        for t in tokens[r].tolist():
            if t in kept:
                pos += 1
            else:
                expect[pos, t] += 1.0 / len(dropped)
        assert kept == [t for t in tokens[r].tolist() if t in kept]  # order preserved
        assert torch.allclose(b.targets[r], expect)


def test_droppable_keeps_prompt() -> None:
    gen = torch.Generator().manual_seed(2)
    tokens, _ = _random_batch(gen, 128, 8, 6)
    tokens[tokens == PAD] = 0
    droppable = torch.zeros(128, 8, dtype=torch.bool)
    droppable[:, 5:] = True
    b = drop_tokens(
        tokens,
        torch.full((128,), 8),
        vocab_size=V,
        cls_id=CLS,
        pad_id=PAD,
        generator=gen,
        droppable=droppable,
    )
    assert torch.equal(b.tokens[:, 1:6], tokens[:, :5])
    assert float(b.targets[:, :5].sum()) == 0.0  # no gap before the last prompt token
    assert int((b.lengths == 6).sum()) > 0 and int(b.lengths.min()) == 6


def test_loss_matches_naive_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    tokens, lengths = _random_batch(gen, 16, 5, 6)
    b = drop_tokens(tokens, lengths, vocab_size=V, cls_id=CLS, pad_id=PAD, generator=gen)
    logits = torch.randn(16, 6, V, generator=gen)
    stop = torch.randn(16, generator=gen)
    ins, n_ins, bce = 0.0, 0, 0.0
    for r in range(16):
        n = int(b.lengths[r])
        logp = logits[r, :n].reshape(-1).log_softmax(0)
        if b.stop[r] == 0:
            ins += float(-(b.targets[r, :n].reshape(-1) * logp).sum())
            n_ins += 1
        p = torch.sigmoid(stop[r])
        bce += float(-(b.stop[r] * p.log() + (1 - b.stop[r]) * (1 - p).log()))
    expect = ins / max(n_ins, 1) + bce / 16
    assert float(ilm_loss(logits, stop, b)) == pytest.approx(expect, rel=1e-5)


class Oracle:
    """Puts all mass on the true (gap, token) pairs of ``targets`` and stops when done."""

    def __init__(self, targets: list[list[int]]) -> None:
        self.targets = targets
        self.calls = 0

    def __call__(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        B, W = tokens.shape
        counts = torch.zeros(B, W, V)
        missing = torch.zeros(B)
        for r, target in enumerate(self.targets):
            current = tokens[r, 1 : int(lengths[r])].tolist()
            j = 0  # greedy leftmost alignment of current inside target
            for t in target:
                if j < len(current) and current[j] == t:
                    j += 1
                else:
                    counts[r, j, t] += 1
                    missing[r] += 1
            assert j == len(current), "the current sequence left the target"
        logits = torch.where(counts > 0, counts.clamp(min=1).log(), torch.tensor(-1e4))
        stop = torch.where(missing == 0, torch.tensor(20.0), torch.tensor(-20.0))
        return logits, stop


def _start(partials: list[list[int]]) -> tuple[Tensor, Tensor]:
    width = 1 + max(len(p) for p in partials)
    tokens = torch.full((len(partials), width), PAD)
    tokens[:, 0] = CLS
    for r, p in enumerate(partials):
        tokens[r, 1 : 1 + len(p)] = torch.tensor(p, dtype=torch.long)
    return tokens, torch.tensor([1 + len(p) for p in partials])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_reconstructs_from_scratch(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    targets = [torch.randint(0, 6, (int(n),), generator=gen).tolist() for n in [0, 1, 5, 12, 17]]
    tokens, lengths = _start([[] for _ in targets])
    oracle = Oracle(targets)
    seq, lens = insert_until_stop(oracle, tokens, lengths, max_len=40, pad_id=PAD, generator=gen)
    for r, t in enumerate(targets):
        assert seq[r, 1 : int(lens[r])].tolist() == t
    assert oracle.calls == 1 + max(len(t) for t in targets)  # one insertion per call


@pytest.mark.parametrize("gaps", [(0, 1), (3, 0, 6), (2, 2, 2, 9)])
def test_oracle_infills_unknown_lengths(gaps: tuple[int, ...]) -> None:
    """Fixed tokens with holes of different, unknown lengths between them."""
    gen = torch.Generator().manual_seed(sum(gaps))
    rows = 4
    targets, partials = [], []
    for _ in range(rows):
        target: list[int] = []
        partial: list[int] = []
        for g in gaps:
            anchor = int(torch.randint(0, 6, (1,), generator=gen))
            target += [anchor, *torch.randint(0, 6, (g,), generator=gen).tolist()]
            partial.append(anchor)
        targets.append(target)
        partials.append(partial)
    tokens, lengths = _start(partials)
    allowed = torch.tensor([True] * 6 + [False, False])
    seq, lens = insert_until_stop(
        Oracle(targets),
        tokens,
        lengths,
        max_len=1 + len(targets[0]) + 5,
        pad_id=PAD,
        generator=gen,
        allowed_tokens=allowed,
    )
    assert lens.tolist() == [1 + len(t) for t in targets]
    for r, t in enumerate(targets):
        assert seq[r, 1 : int(lens[r])].tolist() == t


def test_insertion_never_exceeds_max_len() -> None:
    gen = torch.Generator().manual_seed(4)

    def never_stops(tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        B, W = tokens.shape
        return torch.randn(B, W, V, generator=gen), torch.full((B,), -30.0)

    tokens, lengths = _start([[1], [], [2, 3, 4]])
    seq, lens = insert_until_stop(
        never_stops, tokens, lengths, max_len=9, pad_id=PAD, generator=gen
    )
    assert seq.shape == (3, 9) and lens.tolist() == [9, 9, 9]
    assert bool((seq[:, 0] == CLS).all())


def test_greedy_by_pair_and_by_gap() -> None:
    """Greedy by pair takes the joint argmax; greedy by gap the argmax of the gap marginal
    first (the official predictor's top-1 / top-1). Here they disagree."""
    gen = torch.Generator().manual_seed(6)

    def scorer(tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        B, W = tokens.shape
        p = torch.full((B, W, V), 1e-6)
        p[:, 0, 1] = p[:, 0, 2] = 0.3  # gap 0: mass 0.6 split over two tokens
        p[:, 1, 3] = 0.4  # gap 1: one token with 0.4
        return p.log(), torch.full((B,), -30.0)

    tokens, lengths = _start([[5]])

    def run(by: str) -> list[int]:
        seq, _ = insert_until_stop(
            scorer,
            tokens,
            lengths,
            max_len=3,
            pad_id=PAD,
            generator=gen,
            greedy=True,
            greedy_by=by,  # type: ignore[arg-type]
        )
        return seq[0].tolist()

    assert run("pair") == [CLS, 5, 3]
    assert run("gap") == [CLS, 1, 5]
    with pytest.raises(ConfigError):
        run("token")


def test_insertion_model_is_bidirectional_and_ignores_padding() -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, max_seq_len=16)
    model = InsertionModel(Transformer(cfg)).eval()
    tokens, lengths = _start([[1, 2, 3, 4], [5, 1]])
    logits, stop = model(tokens, lengths)
    changed = tokens.clone()
    changed[0, 4] = 0  # the last token of row 0
    changed[1, 3:] = 2  # padding of row 1
    logits2, stop2 = model(changed, lengths)
    assert not torch.allclose(logits[0, 0], logits2[0, 0])  # slot 0 sees the future
    assert torch.allclose(logits[1, :3], logits2[1, :3], atol=1e-6)
    assert torch.allclose(stop[1], stop2[1], atol=1e-6)


def test_bad_inputs_raise() -> None:
    gen = torch.Generator().manual_seed(5)
    tokens, lengths = _start([[1, 2]])
    oracle = Oracle([[1, 2]])
    with pytest.raises(ConfigError):
        insert_until_stop(
            oracle, tokens, lengths, max_len=5, pad_id=PAD, generator=gen, stop_threshold=0.0
        )
    with pytest.raises(InputError):
        insert_until_stop(oracle, tokens, lengths, max_len=2, pad_id=PAD, generator=gen)
    with pytest.raises(InputError):
        insert_until_stop(oracle, tokens.float(), lengths, max_len=5, pad_id=PAD, generator=gen)
    with pytest.raises(InputError):
        insert_until_stop(oracle, tokens, torch.tensor([0]), max_len=5, pad_id=PAD, generator=gen)
    with pytest.raises(InputError):
        drop_tokens(tokens, lengths, vocab_size=2, cls_id=CLS, pad_id=PAD, generator=gen)
    with pytest.raises(InputError):
        drop_tokens(tokens, torch.tensor([9]), vocab_size=V, cls_id=CLS, pad_id=PAD, generator=gen)
    with pytest.raises(ConfigError):
        StarGraph(degree=1, arm_len=3)


def test_star_graph_models_start_from_the_seed() -> None:
    """The initial weights depend on ``seed`` alone, not on the global RNG state."""
    task = StarGraph(degree=2, arm_len=1)
    for make in (ar_trainer, ilm_trainer):
        a = make(task, steps=1, seed=3).model.state_dict()
        torch.manual_seed(99)
        b = make(task, steps=1, seed=3).model.state_dict()
        c = make(task, steps=1, seed=4).model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_star_graph_layout() -> None:
    task = StarGraph(degree=3, arm_len=4)
    seq = task.sample(torch.Generator().manual_seed(0), 16)
    P = task.prompt_len
    assert seq.shape == (16, P + task.path_len)
    for row in seq.tolist():
        edges = {(row[i], row[i + 1]) for i in range(0, P - 4, 2)}
        start, goal, path = row[P - 3], row[P - 2], row[P:]
        assert row[P - 4] == row[P - 1] == task.sep
        assert path[0] == start and path[-1] == goal
        assert all((a, b) in edges for a, b in itertools.pairwise(path))
        assert len(edges) == task.degree * task.arm_len


# Degree 3, arm length 2 (7 nodes; path = start, one middle node, goal), 3000 updates per
# model, batch 64, lr 1e-3 (cosine), seed 0, 500 held-out graphs (generator seed 12345),
# greedy decoding; about 5 minutes on one CPU thread. Measured (2-core CPU, 1 thread):
#   seed 0: AR 0.338, ILM 0.856    seed 1: AR 0.326, ILM 1.000    seed 2: AR 0.328, ILM 0.338
# AR's loss sits at its Clever-Hans optimum (it guesses the arm). The ILM learns the lookup
# (the goal's parent) late and then jumps; when is seed-dependent: seed 2 has not jumped by
# 3000 updates (in a 5000-update run it reaches 0.808 at 4000 and 1.000 at 5000, AR 0.326).
# So the assertion below is of the stated seed (0), not of every seed.
STAR_DEGREE, STAR_ARM_LEN, STAR_STEPS = 3, 2, 3000


@pytest.fixture(scope="module")
def star_graph_accuracies() -> tuple[float, float]:
    """(AR, ILM) exact path accuracy on 500 held-out graphs, seed 0."""
    task = StarGraph(degree=STAR_DEGREE, arm_len=STAR_ARM_LEN)
    test = task.sample(torch.Generator().manual_seed(12345), 500)
    ar = ar_path_accuracy(train_ar(task, steps=STAR_STEPS, seed=0), task, test)
    ilm_model = train_ilm(task, steps=STAR_STEPS, seed=0)
    ilm = ilm_path_accuracy(ilm_model, task, test, torch.Generator().manual_seed(0))
    print(
        f"star graph d={STAR_DEGREE} l={STAR_ARM_LEN}, {STAR_STEPS} steps: AR {ar:.3f}  ILM {ilm:.3f}"
    )
    return ar, ilm


@pytest.mark.slow
def test_star_graph_ar_sits_near_chance(star_graph_accuracies: tuple[float, float]) -> None:
    # The AR baseline learns to pick an arm but not which one: near 1/degree, not above.
    ar, _ = star_graph_accuracies
    assert abs(ar - 1 / STAR_DEGREE) <= 0.1  # 1/3 plus sampling noise (s.e. 0.021 on 500)


@pytest.mark.slow
def test_star_graph_ilm_beats_ar(star_graph_accuracies: tuple[float, float]) -> None:
    # The paper's claim at this CPU budget, seed 0: ILM well above AR (a margin of 0.3 is
    # > 10 binomial standard errors on 500 graphs) and well above chance.
    ar, ilm = star_graph_accuracies
    assert ilm >= 0.7
    assert ilm - ar >= 0.3
