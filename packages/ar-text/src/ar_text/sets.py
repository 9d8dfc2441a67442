"""Order Matters: sequence to sequence for sets (Vinyals, Bengio & Kudlur, ICLR 2016,
arXiv:1511.06391).

* :class:`ReadProcessWrite` – **read**: a per-element embedding (memories ``m_i``);
  **process**: an LSTM with no input of its own runs ``process_steps`` times, each step
  attending over the memories by content (``softmax_i <m_i, q_t>``) and feeding the read
  vector back (``q*_t = [q_t, r_t]``): a function of the *set* of memories, so the
  encoding is invariant to the input order; **write**: a pointer decoder (Vinyals et al.
  2015) started from ``q*`` that points at one input element per step (already pointed
  elements masked out).
* :class:`LSTMPointer` – the baseline: an LSTM encoder reads the elements in the given
  order (its memories are its outputs, its final state starts the same pointer decoder).
* :func:`order_search_loss` – the loss when the target is a set: ``max`` over output
  orders of ``log p(order | x)``, approximated by the best of ``samples`` orders drawn
  from the model (uniform orders during warm-up).
* :func:`sorting_batch`, :func:`train_sorter`, :func:`sorting_accuracy` – sorting ``N``
  numbers: the target is the ascending order of the input positions.

Shapes: B rows, N elements, D input features, H hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError

__all__ = [
    "LSTMPointer",
    "ReadProcessWrite",
    "order_search_loss",
    "sequence_logprob",
    "sorting_accuracy",
    "sorting_batch",
    "train_sorter",
]


def _check_x(x: Tensor, d_in: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != d_in:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x must be a (B, N, {d_in}) float tensor, got {got}")
    if x.shape[1] < 1:
        raise InputError("x holds no elements (N = 0)")


class _PointerDecoder(nn.Module):
    """Pointer decoder: an LSTM cell whose input is the last pointed memory; additive
    attention over the memories gives the next pointer's logits."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(hidden, hidden)
        self.start = nn.Parameter(torch.zeros(hidden))
        self.w_m = nn.Linear(hidden, hidden, bias=False)
        self.w_h = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, memories: Tensor, state: tuple[Tensor, Tensor], order: Tensor) -> Tensor:
        """(B, N) log-probabilities of each step's pointer given the previous ones of
        ``order`` (B, N) (teacher forcing); pointed elements are masked out."""
        B, N, H = memories.shape
        keys = self.w_m(memories)
        used = torch.zeros(B, N, dtype=torch.bool, device=memories.device)
        inp = self.start.expand(B, H)
        h, c = state
        out = []
        rows = torch.arange(B, device=memories.device)
        for t in range(N):
            h, c = self.cell(inp, (h, c))
            logits = self.v(torch.tanh(keys + self.w_h(h)[:, None])).squeeze(-1)
            logp = F.log_softmax(logits.masked_fill(used, float("-inf")), dim=-1)
            idx = order[:, t]
            out.append(logp[rows, idx])
            used = used | F.one_hot(idx, N).bool()
            inp = memories[rows, idx]
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def sample(
        self,
        memories: Tensor,
        state: tuple[Tensor, Tensor],
        greedy: bool,
        gen: torch.Generator | None,
    ) -> Tensor:
        B, N, H = memories.shape
        keys = self.w_m(memories)
        used = torch.zeros(B, N, dtype=torch.bool, device=memories.device)
        inp = self.start.expand(B, H)
        h, c = state
        rows = torch.arange(B, device=memories.device)
        picks = []
        for _ in range(N):
            h, c = self.cell(inp, (h, c))
            logits = self.v(torch.tanh(keys + self.w_h(h)[:, None])).squeeze(-1)
            logits = logits.masked_fill(used, float("-inf"))
            if greedy:
                idx = logits.argmax(-1)
            else:
                idx = torch.multinomial(F.softmax(logits, -1), 1, generator=gen).squeeze(-1)
            picks.append(idx)
            used = used | F.one_hot(idx, N).bool()
            inp = memories[rows, idx]
        return torch.stack(picks, dim=1)


class ReadProcessWrite(nn.Module):
    """Read (per-element MLP), process (``process_steps`` of input-less LSTM + content
    attention), write (pointer decoder)."""

    def __init__(self, d_in: int = 1, hidden: int = 64, process_steps: int = 5) -> None:
        super().__init__()
        if d_in < 1 or hidden < 1 or process_steps < 1:
            raise ConfigError(
                f"need d_in, hidden, process_steps >= 1, got {d_in}, {hidden}, {process_steps}"
            )
        self.d_in, self.hidden, self.process_steps = d_in, hidden, process_steps
        self.read = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.process = nn.LSTMCell(2 * hidden, hidden)  # its input is q*_{t-1}, never x
        self.to_state = nn.Linear(2 * hidden, 2 * hidden)
        self.write = _PointerDecoder(hidden)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Memories (B, N, H) and the set encoding ``q*`` (B, 2H) after the process block."""
        _check_x(x, self.d_in)
        m = self.read(x)
        B, H = x.shape[0], self.hidden
        q_star = m.new_zeros(B, 2 * H)
        h = c = m.new_zeros(B, H)
        for _ in range(self.process_steps):
            h, c = self.process(q_star, (h, c))
            a = F.softmax(torch.einsum("bnh,bh->bn", m, h), dim=-1)
            r = torch.einsum("bn,bnh->bh", a, m)
            q_star = torch.cat([h, r], dim=-1)
        return m, q_star

    def _state(self, q_star: Tensor) -> tuple[Tensor, Tensor]:
        h, c = self.to_state(q_star).chunk(2, dim=-1)
        return torch.tanh(h), c

    def forward(self, x: Tensor, order: Tensor) -> Tensor:
        m, q = self.encode(x)
        return self.write(m, self._state(q), _check_order(order, x))

    def decode(self, x: Tensor, greedy: bool = True, gen: torch.Generator | None = None) -> Tensor:
        m, q = self.encode(x)
        return self.write.sample(m, self._state(q), greedy, gen)


class LSTMPointer(nn.Module):
    """The baseline: an LSTM encoder over the elements in input order + the same pointer
    decoder."""

    def __init__(self, d_in: int = 1, hidden: int = 64) -> None:
        super().__init__()
        if d_in < 1 or hidden < 1:
            raise ConfigError(f"need d_in, hidden >= 1, got {d_in}, {hidden}")
        self.d_in, self.hidden = d_in, hidden
        self.embed = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.write = _PointerDecoder(hidden)

    def _encode(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        _check_x(x, self.d_in)
        out, (h, c) = self.encoder(self.embed(x))
        return out, (h[0], c[0])

    def forward(self, x: Tensor, order: Tensor) -> Tensor:
        m, state = self._encode(x)
        return self.write(m, state, _check_order(order, x))

    def decode(self, x: Tensor, greedy: bool = True, gen: torch.Generator | None = None) -> Tensor:
        m, state = self._encode(x)
        return self.write.sample(m, state, greedy, gen)


def _check_order(order: Tensor, x: Tensor) -> Tensor:
    B, N = x.shape[:2]
    if not isinstance(order, Tensor) or tuple(order.shape) != (B, N):
        got = tuple(order.shape) if isinstance(order, Tensor) else type(order).__name__
        raise InputError(f"order must be a (B, N) = ({B}, {N}) long tensor, got {got}")
    if not bool((order.sort(-1).values == torch.arange(N, device=order.device)).all()):
        raise InputError("each row of order must be a permutation of 0..N-1")
    return order


def sequence_logprob(model: nn.Module, x: Tensor, order: Tensor) -> Tensor:
    """(B,) ``log p(order | x)``."""
    return model(x, order).sum(-1)


def order_search_loss(
    model: ReadProcessWrite | LSTMPointer,
    x: Tensor,
    samples: int = 4,
    warmup: bool = False,
    gen: torch.Generator | None = None,
) -> Tensor:
    """``-max_order log p(order | x)`` over ``samples`` candidate orders per row: drawn
    uniformly during warm-up, from the model afterwards (the paper's approximation of the
    max over all N! orders; for a set-valued target every order is correct)."""
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    B, N = x.shape[:2]
    cands = []
    for _ in range(samples):
        if warmup:
            cands.append(torch.stack([torch.randperm(N, generator=gen) for _ in range(B)]))
        else:
            cands.append(model.decode(x, greedy=False, gen=gen))
    lps = torch.stack([sequence_logprob(model, x, o) for o in cands], dim=1)  # (B, S)
    return -lps.max(dim=1).values.mean()


def sorting_batch(batch: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform numbers in (0, 1), shape (B, N, 1), in random order, and the ascending order
    of their positions (B, N)."""
    if batch < 1 or n < 2:
        raise ConfigError(f"need batch >= 1 and n >= 2, got {batch}, {n}")
    x = torch.rand(batch, n, 1, generator=gen)
    return x, x[..., 0].argsort(-1)


def train_sorter(
    model: ReadProcessWrite | LSTMPointer, n: int, steps: int, batch: int, lr: float, seed: int
) -> list[float]:
    """Teacher-forced NLL of the sorted order; returns the loss per step."""
    if steps < 1 or lr <= 0:
        raise ConfigError(f"need steps >= 1 and lr > 0, got {steps}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        x, order = sorting_batch(batch, n, gen)
        loss = -sequence_logprob(model, x, order).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def sorting_accuracy(
    model: ReadProcessWrite | LSTMPointer, n: int, rows: int, seed: int
) -> tuple[float, float]:
    """(fraction of rows sorted exactly, fraction of positions right) with greedy decoding."""
    x, order = sorting_batch(rows, n, torch.Generator().manual_seed(seed))
    pred = model.decode(x, greedy=True)
    right = pred == order
    return float(right.all(-1).float().mean()), float(right.float().mean())
