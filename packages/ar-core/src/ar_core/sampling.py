"""Logits processors and the categorical sampler.

Each processor is a small callable ``processor(logits, input_ids) -> logits`` on (B, V)
logits; they compose in a list (:func:`apply_processors`), the Hugging Face
``LogitsProcessor`` idea without the class hierarchy. Removed tokens get ``-inf``.

* temperature scaling; temperature 0 keeps only the argmax (greedy);
* top-k (Fan et al., "Hierarchical Neural Story Generation", 2018, arXiv:1805.04833);
* top-p / nucleus (Holtzman et al., "The Curious Case of Neural Text Degeneration",
  2019, arXiv:1904.09751): the smallest set of tokens whose probability mass is >= p;
* min-p (Nguyen et al., "Turning Up the Heat: Min-p Sampling", 2024, arXiv:2407.01082):
  tokens with probability >= min_p * the top probability;
* typical (Meister et al., "Locally Typical Sampling", 2022, arXiv:2202.00666);
* repetition penalty (Keskar et al., "CTRL", 2019, arXiv:1909.05858): logits of tokens
  already in ``input_ids`` are divided by the penalty when positive, multiplied when
  negative. Negative ids in ``input_ids`` are ignored (unused slots).

:func:`sample` draws one token per row with an explicit ``torch.Generator`` (gpt-fast's
sync-free exponential trick); an all ``-inf`` row is an :class:`~ar_core.errors.InputError`.

Notation: B rows, V vocabulary, L history length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from ar_core.errors import ConfigError, InputError

__all__ = [
    "FiniteWatch",
    "LogitsProcessor",
    "MinP",
    "RepetitionPenalty",
    "Temperature",
    "TopK",
    "TopP",
    "Typical",
    "apply_processors",
    "build_processors",
    "check_finite_rows",
    "logits_to_probs",
    "multinomial_sample_one_no_sync",
    "sample",
]

NEG_INF = float("-inf")


class LogitsProcessor(Protocol):
    """``(logits (B, V), input_ids (B, L) or None) -> logits (B, V)``."""

    def __call__(self, logits: Tensor, input_ids: Tensor | None) -> Tensor: ...


class Temperature:
    """logits / t; t = 0 keeps only the argmax (the first on ties), i.e. greedy."""

    def __init__(self, temperature: float) -> None:
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature

    def __call__(self, logits: Tensor, input_ids: Tensor | None = None) -> Tensor:
        if self.temperature == 0:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep.scatter_(-1, logits.argmax(-1, keepdim=True), True)
            return logits.masked_fill(~keep, NEG_INF)
        return logits / self.temperature


class TopK:
    """Keep the k largest logits of each row."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ConfigError(f"top_k must be >= 1, got {k}")
        self.k = k

    def __call__(self, logits: Tensor, input_ids: Tensor | None = None) -> Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, NEG_INF)


class TopP:
    """Keep the smallest set of most likely tokens whose probability mass is >= p."""

    def __init__(self, p: float) -> None:
        if not 0 < p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {p}")
        self.p = p

    def __call__(self, logits: Tensor, input_ids: Tensor | None = None) -> Tensor:
        if self.p >= 1.0:
            return logits
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        # at least float32 (float64 logits keep float64: p near 1 needs the precision)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        probs = torch.softmax(sorted_logits.to(dtype), dim=-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        remove_sorted = mass_before >= self.p  # the set is complete before this token
        remove = torch.zeros_like(remove_sorted).scatter_(-1, order, remove_sorted)
        return logits.masked_fill(remove, NEG_INF)


class MinP:
    """Keep tokens whose probability is >= min_p * (the row's top probability)."""

    def __init__(self, min_p: float) -> None:
        if not 0 <= min_p <= 1:
            raise ConfigError(f"min_p must be in [0, 1], got {min_p}")
        self.min_p = min_p

    def __call__(self, logits: Tensor, input_ids: Tensor | None = None) -> Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        threshold = self.min_p * probs.amax(-1, keepdim=True)  # (B, 1)
        return logits.masked_fill(probs < threshold, NEG_INF)


class Typical:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the
    entropy, in that order, until their mass reaches ``mass``."""

    def __init__(self, mass: float) -> None:
        if not 0 < mass <= 1:
            raise ConfigError(f"typical_p must be in (0, 1], got {mass}")
        self.mass = mass

    def __call__(self, logits: Tensor, input_ids: Tensor | None = None) -> Tensor:
        if self.mass >= 1.0:
            return logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        p = logp.exp()
        entropy = -(p * logp).nan_to_num(0.0).sum(-1, keepdim=True)  # (B, 1)
        shift = (-logp - entropy).abs()  # distance of surprisal from the entropy
        order = torch.argsort(shift, dim=-1)
        sorted_p = p.gather(-1, order)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        remove_sorted = mass_before >= self.mass
        remove = torch.zeros_like(remove_sorted).scatter_(-1, order, remove_sorted)
        return logits.masked_fill(remove, NEG_INF)


class RepetitionPenalty:
    """CTRL's penalty on every token id present in ``input_ids`` (negative ids ignored)."""

    def __init__(self, penalty: float) -> None:
        if penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = penalty

    def __call__(self, logits: Tensor, input_ids: Tensor | None) -> Tensor:
        if input_ids is None or self.penalty == 1.0 or input_ids.numel() == 0:
            return logits
        B, V = logits.shape
        # unused slots (negative ids) go to an extra column that is dropped
        index = torch.where(input_ids >= 0, input_ids, V)  # (B, L)
        seen = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
        seen = seen.scatter_(-1, index, True)[:, :V]  # (B, V)
        penalised = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return torch.where(seen, penalised, logits)


def build_processors(config: Any) -> list[LogitsProcessor]:
    """The processors a config asks for (any object with the GenerationConfig fields; a
    missing field or None means off), in HF's order: penalty, temperature, then filters."""

    def get(name: str) -> Any:
        return getattr(config, name, None)

    out: list[LogitsProcessor] = []
    if get("repetition_penalty") not in (None, 1.0):
        out.append(RepetitionPenalty(get("repetition_penalty")))
    if get("temperature") not in (None, 1.0):
        out.append(Temperature(get("temperature")))
    if get("top_k") is not None:
        out.append(TopK(get("top_k")))
    if get("top_p") not in (None, 1.0):
        out.append(TopP(get("top_p")))
    if get("min_p") not in (None, 0.0):
        out.append(MinP(get("min_p")))
    if get("typical_p") not in (None, 1.0):
        out.append(Typical(get("typical_p")))
    return out


def apply_processors(
    processors: Sequence[LogitsProcessor], logits: Tensor, input_ids: Tensor | None = None
) -> Tensor:
    """Run ``processors`` in order over ``logits`` (B, V)."""
    for processor in processors:
        logits = processor(logits, input_ids)
    return logits


def check_finite_rows(logits: Tensor) -> None:
    """InputError naming the first row whose logits are all -inf (nothing to sample)."""
    dead = torch.isneginf(logits).all(-1)  # (B,)
    if bool(dead.any()):
        row = int(dead.nonzero()[0, 0])
        raise InputError(
            f"all logits are -inf in row {row} (of {logits.shape[0]}): there is no token "
            f"left to sample; loosen top_k/top_p/min_p/typical_p or check the model output"
        )


class FiniteWatch:
    """Records, on the device, whether each row's logits held NaN or +inf (or were all
    -inf) at each step, without a host sync per step: :meth:`update` costs one or two
    reductions; :meth:`check` (one sync, at the end of a loop) raises an
    :class:`InputError` naming the earliest such step and the first row poisoned at it.
    Partly -inf logits (masked tokens) are fine.

    ``update(logits, step)``: ``logits`` (R, ..., V) with R a multiple of the ``rows``
    watched: the copies of row b (guidance rows, beams) are rows b, b + rows, ... or, with
    ``grouped=True``, rows b·k .. b·k + k - 1. ``active`` (rows,) bool: only these rows
    count at this step (pass a tensor that is not modified in place later).
    """

    def __init__(self, rows: int, device: torch.device | str, what: str = "the model") -> None:
        self.rows, self.what = rows, what
        self._entries: list[tuple[int, Tensor, Tensor | None, bool]] = []

    def update(
        self,
        logits: Tensor,
        step: int,
        active: Tensor | None = None,
        grouped: bool = False,
    ) -> None:
        peak = logits.detach().amax(-1)  # NaN and +inf propagate; -inf only if all are
        if peak.dim() > 1:  # a sum is non-finite iff a term is (peaks are far from overflow)
            peak = peak.float().flatten(1).sum(-1)
        self._entries.append((step, peak, active, grouped))  # (R,)

    def _bad(self) -> tuple[Tensor, Tensor] | None:
        """(steps (S,), bad (S, rows) bool) over every update, or None without any."""
        if not self._entries:
            return None
        steps = torch.tensor([e[0] for e in self._entries], device=self._entries[0][1].device)
        peaks = [e[1] for e in self._entries]
        actives = [e[2] for e in self._entries]
        uniform = all(p.shape == (self.rows,) for p in peaks)
        if uniform and len({a is None for a in actives}) == 1:
            # the loop of greedy/sample: a few ops for the whole decode
            bad = ~torch.isfinite(torch.stack(peaks))  # (S, rows)
            if actives[0] is not None:
                bad &= torch.stack(actives)  # type: ignore[arg-type]
            return steps, bad
        bad_rows = []
        for _step, peak, active, grouped in self._entries:
            ok = torch.isfinite(peak)
            ok = ok.reshape(self.rows, -1) if grouped else ok.reshape(-1, self.rows).T
            row_bad = ~ok.all(-1)
            bad_rows.append(row_bad if active is None else row_bad & active)
        return steps, torch.stack(bad_rows)

    def check(self) -> None:
        found = self._bad()
        if found is None:
            return
        steps, bad = found
        if bool(bad.any()):  # the only host sync
            hit_steps = steps[:, None].expand_as(bad)[bad]
            step = int(hit_steps.min())
            row = int((bad & (steps[:, None] == step)).any(0).nonzero()[0, 0])
            raise InputError(
                f"non-finite logits (NaN or inf) from {self.what} at decode step {step}, row "
                f"{row}: the output would be garbage; check the model's weights and inputs "
                f"for NaN/inf (e.g. torch.isfinite on each parameter) or use float32"
            )


def logits_to_probs(logits: Tensor) -> Tensor:
    """Softmax in float32 over the last dimension."""
    return torch.softmax(logits.float(), dim=-1)


def multinomial_sample_one_no_sync(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One categorical draw per row without a device sync: argmax of probs / Exp(1)."""
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / noise, dim=-1)  # (B,)


def sample(
    logits: Tensor, generator: torch.Generator | None = None, *, temperature: float = 1.0
) -> Tensor:
    """Draw one token id per row of ``logits`` (B, V) -> (B,) long.

    Processors are applied before (see :func:`build_processors`); ``temperature`` here is
    a convenience (0 = argmax, no draw). Rows that are all ``-inf`` raise InputError.
    """
    if logits.ndim != 2:
        raise InputError(f"sample expects (B, V) logits, got shape {tuple(logits.shape)}")
    check_finite_rows(logits)
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits = Temperature(temperature)(logits)
    return multinomial_sample_one_no_sync(logits_to_probs(logits), generator)
