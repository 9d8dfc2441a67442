"""CtrlDiff: block diffusion with a learned block-size policy and classifier guidance.

Huang & Tang, "CtrlDiff: Boosting Large Diffusion Language Models with Dynamic Block
Prediction and Controllable Generation" (2025). The sampler is BD3-LM's
(:mod:`ar_diffusion.bd3`: AR across blocks, masked diffusion inside each, the finished
block's clean keys and values written to the KV cache once), with two additions:

* **Dynamic block sizes.** Before each block a policy (:class:`BlockSizePolicy`, a linear
  layer over the last clean token's final hidden state, which the cache write or the
  prompt's prefill returns for free) picks the next block's size from ``sizes``. It is
  trained by policy gradient (REINFORCE with the batch-mean baseline,
  :func:`train_block_policy`) on quality per network call. The reward of one sampled
  continuation of N tokens is

      R = quality - lam * (network calls) / N

  where ``quality`` is a caller's score of the continuation (by default the negative
  NLL per token of the new tokens under an AR model, in nats: the generative
  perplexity's logarithm) and ``lam`` (nats per call per token) prices the calls. A
  larger block takes fewer calls (each block costs its denoising steps plus one cache
  write) but unmasks more tokens in parallel, which costs quality; the policy learns
  where in the text large blocks are safe.
* **Classifier guidance for discrete diffusion** (Nisonoff et al., "Unlocking Guidance
  for Discrete State-Space Diffusion and Flow Models", 2024, here for masked diffusion). At each denoising step, the candidates ``v``
  of a masked position ``i`` are reweighted by the classifier:

      p_gamma(x_i = v) ∝ x_theta(x_t)_{i, v} · p(y | x_t with x_i = v) ^ gamma

  computed in log space (``subs_logits + gamma * log p(y | ...)``), so ``gamma = 0``
  leaves the logits bitwise unchanged and reproduces unguided sampling draw for draw.
  The classifier reads noisy sequences (``[MASK]`` included) over the model's own
  vocabulary; :class:`BagOfTokensClassifier` evaluates every candidate exactly in closed
  form, :class:`SequenceClassifier` wraps any classifier of token sequences by running
  every single-position substitution (exact, V forwards per masked position).

``ctrldiff`` with a fixed ``block_size``, no policy and no classifier is
``block-diffusion`` (same draws, same tokens). ``stats.target_forward_passes`` counts
network calls (prefill and cache writes included).

Notation: B rows, P padded prompt width, N new tokens, L block size, W columns so far, V
vocabulary (mask included), M masked positions scored, C model width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError
from ar_core.generation import (
    GenerationConfig,
    GenerationResult,
    GenerationStats,
    Rows,
    Streamer,
    TokenPicker,
    check_eos,
    make_generator,
    positive_int,
    reject_repetition_penalty,
)
from ar_diffusion.layout import PromptLayout
from ar_diffusion.subs import check_mask_id, subs_logits
from ar_diffusion.unmask import first_hitting_step, reveal_counts

__all__ = [
    "BagOfTokensClassifier",
    "BlockSizePolicy",
    "GuidanceClassifier",
    "SequenceClassifier",
    "ctrldiff",
    "sample_with_policy",
    "train_block_policy",
]


# -- classifier guidance ---------------------------------------------------------------


class GuidanceClassifier(Protocol):
    """``candidate_log_probs(x, valid, cols)``: ``log p(y | x with x[:, c] = v)`` for each
    column ``c`` of ``cols`` (M,) and each token ``v``: (B, M, V). ``x`` (B, W) holds
    noisy tokens ([MASK] included), ``valid`` (B, W) marks real columns (None: all)."""

    vocab_size: int

    def candidate_log_probs(self, x: Tensor, valid: Tensor | None, cols: Tensor) -> Tensor: ...


class BagOfTokensClassifier(nn.Module):
    """Logistic regression on token counts: ``log p(y | x) = logsigmoid(b + sum_j w[x_j])``
    over the real columns. A candidate changes one count, so every candidate's
    probability is exact in closed form."""

    def __init__(self, vocab_size: int, weights: Tensor | None = None, bias: float = 0.0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        w = torch.zeros(vocab_size) if weights is None else weights.detach().float().clone()
        if w.shape != (vocab_size,):
            raise ConfigError(
                f"BagOfTokensClassifier: weights must have shape ({vocab_size},), got "
                f"{tuple(w.shape)}"
            )
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def score(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``b + sum_j w[x_j]`` over real columns: (B,)."""
        terms = self.weight[x]  # (B, W)
        if valid is not None:
            terms = terms * valid
        return self.bias + terms.sum(-1)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``log p(y | x)``: (B,)."""
        return nn.functional.logsigmoid(self.score(x, valid))

    def candidate_log_probs(self, x: Tensor, valid: Tensor | None, cols: Tensor) -> Tensor:
        base = self.score(x, valid)  # (B,)
        current = self.weight[x[:, cols]]  # (B, M): the term each candidate replaces
        logit = base[:, None, None] - current[..., None] + self.weight[None, None, :]  # (B, M, V)
        return nn.functional.logsigmoid(logit)


class SequenceClassifier:
    """Any classifier ``fn(x (n, W), valid (n, W) | None) -> log p(y | x) (n,)`` over a
    vocabulary of ``vocab_size`` ids, made a :class:`GuidanceClassifier` by scoring every
    single-position substitution (exact; ``V`` rows per masked column, in chunks)."""

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor | None], Tensor],
        vocab_size: int,
        chunk: int = 4096,
    ) -> None:
        self.fn, self.vocab_size, self.chunk = fn, vocab_size, chunk

    def candidate_log_probs(self, x: Tensor, valid: Tensor | None, cols: Tensor) -> Tensor:
        B = x.shape[0]
        V = self.vocab_size
        out = torch.empty((B, cols.numel(), V), device=x.device)
        cand = torch.arange(V, device=x.device)
        for m, c in enumerate(cols.tolist()):
            rows = x.repeat_interleave(V, 0)  # (B V, W)
            rows[:, c] = cand.repeat(B)
            v_rows = None if valid is None else valid.repeat_interleave(V, 0)
            scores = [
                self.fn(
                    rows[i : i + self.chunk], None if v_rows is None else v_rows[i : i + self.chunk]
                )
                for i in range(0, B * V, self.chunk)
            ]
            out[:, m] = torch.cat(scores).view(B, V)
        return out


def check_classifier(classifier: Any, vocab_size: int, gamma: float) -> None:
    if not callable(getattr(classifier, "candidate_log_probs", None)):
        raise ConfigError(
            f"ctrldiff: classifier must have candidate_log_probs(x, valid, cols) (a "
            f"BagOfTokensClassifier or SequenceClassifier), got {type(classifier).__name__}"
        )
    vocab = getattr(classifier, "vocab_size", None)
    if vocab != vocab_size:
        raise ConfigError(
            f"ctrldiff: the classifier is over a vocabulary of {vocab} ids but the model's "
            f"has {vocab_size} (its tokens and [MASK]); train the classifier on the model's "
            f"vocabulary"
        )
    if not (isinstance(gamma, int | float) and gamma >= 0 and gamma == gamma):
        raise ConfigError(f"ctrldiff: gamma must be a number >= 0, got {gamma!r}")


# -- the block-size policy ---------------------------------------------------------------


class BlockSizePolicy(nn.Module):
    """A categorical over ``sizes`` from the final hidden state (C,) of the last clean
    token: one linear layer (initialised to zero: uniform over the sizes)."""

    def __init__(self, dim: int, sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = list(sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ConfigError(f"BlockSizePolicy: sizes must be ints >= 1, got {sizes}")
        self.sizes = sizes
        self.head = nn.Linear(dim, len(sizes))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """Log-probabilities of each size: (B, len(sizes))."""
        return torch.log_softmax(self.head(hidden.float()), -1)


# -- the sampler -------------------------------------------------------------------------


class _Episode:
    """What one row's sampling chose: block sizes and their log-probabilities."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.log_probs: list[Tensor] = []
        self.calls = 0


def _sample(
    model: Any,
    layout: PromptLayout,
    *,
    block_size: int,
    steps: int | None,
    mask_id: int,
    picker: TokenPicker,
    gen: torch.Generator,
    stats: GenerationStats,
    policy: BlockSizePolicy | None,
    explore: bool,
    classifier: GuidanceClassifier | None,
    gamma: float,
    episode: _Episode,
) -> Tensor:
    """The new tokens (B, N) of one batch (one row when a policy chooses sizes)."""
    B, P = layout.tokens.shape
    N = layout.n_new
    device = layout.tokens.device
    cache = model.new_cache(B, P + N)
    attn = layout.block_causal(block_size)  # the prompt's blocks; blocks see the cache
    with torch.no_grad():
        out = model(layout.tokens, positions=layout.cols(0, P), cache=cache, mask=attn)
    stats.target_forward_passes += 1
    hidden = out.hidden[:, -1]  # (B, C): the last prompt token
    x = layout.tokens
    pos = 0
    while pos < N:
        L = block_size
        if policy is not None:
            logp = policy(hidden)[0]  # (S,)
            if explore:
                choice = int(torch.multinomial(logp.exp(), 1, generator=gen))
            else:
                choice = int(logp.argmax())
            episode.log_probs.append(logp[choice])
            L = min(policy.sizes[choice], N - pos)
            episode.sizes.append(L)
        elif N - pos < L:
            raise ConfigError(f"ctrldiff: block_size={L} does not divide the length {N}")
        a0 = P + pos
        cols = layout.cols(a0, a0 + L)
        block = torch.full((B, L), mask_id, dtype=torch.long, device=device)
        with torch.no_grad():
            for n_reveal in reveal_counts(L, L if steps is None else steps):
                if n_reveal == 0:
                    continue
                logits = model(block, positions=cols, cache=cache, mask=attn, commit=False).logits
                stats.target_forward_passes += 1
                episode.calls += 1
                logits = subs_logits(logits.float(), block, mask_id)  # (B, L, V)
                if classifier is not None:
                    seq = torch.cat([x, block], 1)  # (B, W)
                    valid = None if layout.valid is None else layout.valid[:, : seq.shape[1]]
                    idx = torch.arange(a0, a0 + L, device=device)
                    cand = classifier.candidate_log_probs(seq, valid, idx)  # (B, L, V)
                    logits = logits + gamma * cand.float()
                probs = picker.probs(logits)
                block = first_hitting_step(block, probs, n_reveal, mask_id, gen, picker.greedy)
            if pos + L < N:  # the clean block's KV, once; its last hidden state feeds the policy
                out = model(block, positions=cols, cache=cache, mask=attn)
                stats.target_forward_passes += 1
                episode.calls += 1
                hidden = out.hidden[:, -1]
        x = torch.cat([x, block], 1)
        pos += L
    return x[:, P:]


def sample_with_policy(
    model: Any,
    prompts: Tensor,
    n_new: int,
    policy: BlockSizePolicy,
    *,
    explore: bool,
    gen: torch.Generator,
    config: GenerationConfig | None = None,
    mask_id: int | None = None,
) -> tuple[Tensor, list[_Episode]]:
    """Sample each row of ``prompts`` (n, P) alone with ``policy`` choosing the block sizes
    (``explore``: drawn from the policy, else its argmax): the new tokens (n, N) and each
    row's episode (sizes, log-probabilities with gradients, network calls)."""
    config = GenerationConfig(max_new_tokens=n_new) if config is None else config
    mask_id = check_mask_id(mask_id, model.vocab_size, prompts, "ctrldiff")
    picker = TokenPicker(config, device=prompts.device)
    out, episodes = [], []
    for b in range(prompts.shape[0]):
        row = prompts[b : b + 1]
        layout = PromptLayout.build(model, row, torch.tensor([row.shape[1]]), n_new, "ctrldiff")
        ep = _Episode()
        out.append(
            _sample(
                model,
                layout,
                block_size=max(policy.sizes),
                steps=None,
                mask_id=mask_id,
                picker=picker,
                gen=gen,
                stats=GenerationStats(),
                policy=policy,
                explore=explore,
                classifier=None,
                gamma=0.0,
                episode=ep,
            )
        )
        episodes.append(ep)
    return torch.cat(out), episodes


def train_block_policy(
    model: Any,
    policy: BlockSizePolicy,
    prompts: Tensor,
    n_new: int,
    quality: Callable[[Tensor, Tensor], Tensor],
    *,
    lam: float,
    updates: int,
    batch_size: int = 8,
    lr: float = 0.05,
    seed: int = 0,
    temperature: float = 1.0,
) -> list[float]:
    """REINFORCE on ``R = quality(prompt, new) - lam * calls / n_new`` (see the module
    docstring) with the batch-mean baseline: ``updates`` Adam steps of the policy, each on
    ``batch_size`` prompts drawn from ``prompts`` (n, P). ``quality(prompts (b, P), new
    (b, N)) -> (b,)``. Returns the mean reward of each update."""
    positive_int(updates, "updates", "train_block_policy")
    positive_int(batch_size, "batch_size", "train_block_policy")
    gen = torch.Generator(device=prompts.device).manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    config = GenerationConfig(max_new_tokens=n_new, temperature=temperature)
    history = []
    for _ in range(updates):
        pick = torch.randint(0, prompts.shape[0], (batch_size,), generator=gen)
        batch = prompts[pick.to(prompts.device)]
        new, episodes = sample_with_policy(
            model, batch, n_new, policy, explore=True, gen=gen, config=config
        )
        with torch.no_grad():
            q = quality(batch, new).float()  # (b,)
        calls = torch.tensor([ep.calls for ep in episodes], dtype=torch.float32)
        reward = q - lam * calls / n_new  # (b,)
        advantage = reward - reward.mean()
        logp = torch.stack([torch.stack(ep.log_probs).sum() for ep in episodes])  # (b,)
        loss = -(advantage.to(logp.device) * logp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(reward.mean()))
    return history


def ctrldiff(
    model: Any,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    prompt_lengths: Tensor | None = None,
    streamer: Streamer | None = None,
    block_size: int = 4,
    steps: int | None = None,
    policy: BlockSizePolicy | None = None,
    classifier: GuidanceClassifier | None = None,
    gamma: float = 1.0,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """CtrlDiff sampling as an ``ar.generate`` strategy: BD3-LM's semi-autoregressive
    sampler over a block-diffusion model, with block sizes from ``policy`` (its argmax;
    each row alone) or a fixed ``block_size`` (``steps`` per block, default the block
    size), and with ``classifier`` guidance of scale ``gamma``.
    ``stats.target_forward_passes`` counts network calls."""
    reject_repetition_penalty(config, "ctrldiff")
    check_eos(config, model.vocab_size)
    B = input_ids.shape[0]
    device = input_ids.device
    lengths = (
        torch.full((B,), input_ids.shape[1], dtype=torch.long, device=device)
        if prompt_lengths is None
        else prompt_lengths
    )
    N = config.max_new_tokens
    block_size = positive_int(block_size, "block_size", "ctrldiff")
    if policy is None and N % block_size:
        raise ConfigError(
            f"ctrldiff: block_size={block_size} does not divide the length {N}; use a "
            f"length that is a multiple of the block size (or a block-size policy)"
        )
    if steps is not None:
        steps = positive_int(steps, "steps", "ctrldiff")
        if policy is not None:
            raise ConfigError("ctrldiff: steps= applies to a fixed block_size, not to a policy")
    if policy is not None and not isinstance(policy, BlockSizePolicy):
        raise ConfigError(
            f"ctrldiff: policy must be a BlockSizePolicy, got {type(policy).__name__}"
        )
    if classifier is not None:
        check_classifier(classifier, model.vocab_size, gamma)
    layout = PromptLayout.build(model, input_ids, lengths, N, "ctrldiff")
    mask_id = check_mask_id(mask_id, model.vocab_size, layout.real_tokens(input_ids), "ctrldiff")
    rows = Rows(input_ids, lengths, config, streamer)
    picker = TokenPicker(config, device=device)
    gen = make_generator(config, device, generator)
    if N == 0:
        return rows.finish()
    parts = [layout]
    if policy is not None:  # each row its own block sizes: one row at a time
        parts = [
            PromptLayout.build(
                model, input_ids[b : b + 1, : int(lengths[b])], lengths[b : b + 1], N, "ctrldiff"
            )
            for b in range(B)
        ]
    new = []
    for part in parts:
        with torch.no_grad():
            new.append(
                _sample(
                    model,
                    part,
                    block_size=block_size,
                    steps=steps,
                    mask_id=mask_id,
                    picker=picker,
                    gen=gen,
                    stats=rows.stats,
                    policy=policy,
                    explore=False,
                    classifier=classifier,
                    gamma=float(gamma),
                    episode=_Episode(),
                )
            )
    rows.emit(torch.cat(new), torch.full((B,), N, dtype=torch.long, device=device))
    return rows.finish()
