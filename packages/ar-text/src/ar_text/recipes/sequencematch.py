"""Recipe ``text-sequencematch``: validity under sampling noise on Dyck-2, with a backspace.

One linear pipeline over :mod:`ar_text.sequencematch` (Cundy & Ermon, ICLR 2024,
arXiv:2306.05426):

    for each method: train a small Transformer on Dyck-2 words -> sample ``n_eval``
    words while replacing each sampled action, with probability ``eps``, by a random
    noise token -> the fraction of valid (balanced) words

Methods, all trained from the same seed (same init, same data stream):

* ``mle`` – cross-entropy on clean words (no noise, never sees ``<bksp>``);
* ``bc-augmented`` – cross-entropy of the expert actions on words augmented with noise
  tokens, each followed by ``<bksp>`` (``bc_loss``): the model learns to delete noise;
* ``sequencematch`` – the same data, ``warmup_steps`` of BC then ``(1 - alpha) BC + alpha
  SequenceMatch`` (``mixed_loss``, offline);
* ``sequencematch-onpolicy`` (not in the defaults: about 6x slower) – as above with the
  policy-occupancy term on ``batch_size`` fresh rollouts of the model a step.

The report: a table of validity (± binomial standard error), training seconds and a
one-sided two-proportion z-test against MLE; a loss curve per method; a few sampled words
per method with their raw actions (``⌫`` = backspace) and the word they leave. ``run``
writes ``models/<method>/`` (``Transformer.save_pretrained``); ``sample`` reloads them.

The defaults are the measured settings of the slow test in ``tests/test_sequencematch.py``
(seed 0, 1 thread): validity at ``eps = 0.1`` over 200 samples MLE 0.575, BC on augmented
data 0.945, SequenceMatch 0.895, on-policy SequenceMatch 0.855. SequenceMatch beats MLE
here; it does not beat plain BC on the same augmented data (see that test's docstring).

Vocabulary (9 ids): ``^`` BOS 0, ``$`` EOS 1, ``(`` 2, ``)`` 3, ``[`` 4, ``]`` 5, fillers
``a`` 6 and ``b`` 7 (never in a valid word), ``⌫`` 8. Noise tokens are ids 2-7: the injected
noise is drawn from the same symbols the model writes, so it is not marked in the shown
samples; what is deleted is visible from the ``⌫`` that follow it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import pydantic
import torch
from torch import Tensor

from ar_core.errors import CheckpointError, ConfigError
from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import Progress, RecipeResult, Table, torch_threads
from ar_core.recipes.base import RecipeBase
from ar_core.trainer import TrainConfig, Trainer
from ar_text.sequencematch import (
    AugmentedBatch,
    apply_backspaces,
    augment_with_backspaces,
    backtrack_logits,
    bc_loss,
    mixed_loss,
    sample_rollouts,
)

# -- Dyck-2 ------------------------------------------------------------------------------------

DYCK_BOS, DYCK_EOS, DYCK_BKSP = 0, 1, 8
DYCK_VOCAB = 9  # BOS, EOS, ( ) [ ], two fillers, <bksp>
DYCK_NOISE: tuple[int, ...] = (2, 3, 4, 5, 6, 7)  # the injected noise tokens
DYCK_PAIRS: dict[int, int] = {2: 3, 4: 5}  # opener -> closer
DYCK_SYMBOLS = "^$()[]ab\u232b"  # id -> shown character (id 8: ⌫)


def dyck2(g: torch.Generator, max_pairs: int = 6) -> list[int]:
    """A random balanced Dyck-2 word with 1..max_pairs pairs, as BOS ... EOS."""
    n = int(torch.randint(1, max_pairs + 1, (), generator=g))
    out, opened = [DYCK_BOS], 0
    stack: list[int] = []
    while opened < n or stack:
        if opened < n and (not stack or float(torch.rand((), generator=g)) < 0.5):
            o = [2, 4][int(torch.randint(0, 2, (), generator=g))]
            out.append(o)
            stack.append(o)
            opened += 1
        else:
            out.append(DYCK_PAIRS[stack.pop()])
    return [*out, DYCK_EOS]


def dyck2_valid(seq: Sequence[int]) -> bool:
    """BOS, a balanced word over ( ) [ ], EOS — and nothing else."""
    if len(seq) < 2 or seq[0] != DYCK_BOS or seq[-1] != DYCK_EOS:
        return False
    stack: list[int] = []
    for t in seq[1:-1]:
        if t in DYCK_PAIRS:
            stack.append(t)
        elif stack and DYCK_PAIRS[stack[-1]] == t:
            stack.pop()
        else:
            return False
    return not stack


def dyck2_show(ids: Sequence[int]) -> str:
    """The ids after BOS as characters (``$`` = EOS, ``⌫`` = backspace)."""
    return "".join(DYCK_SYMBOLS[i] for i in ids[1:])


# -- config ------------------------------------------------------------------------------------

Method = Literal["mle", "bc-augmented", "sequencematch", "sequencematch-onpolicy"]
SM_METHODS = ("sequencematch", "sequencematch-onpolicy")
MIN_SEQ_LEN = 96  # the measured model's context; raised when the settings need more
# torch.optim.AdamW's defaults, with which the measured numbers were trained
ADAMW_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 0.01


class SequenceMatchConfig(pydantic.BaseModel):
    """Settings of ``text-sequencematch``; the defaults are the measured ones (module doc)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    methods: list[Method] = ["mle", "bc-augmented", "sequencematch"]
    # -- training (each method)
    steps: int = pydantic.Field(300, ge=1)
    batch_size: int = pydantic.Field(32, ge=1)  # words a step (and rollouts a step, on-policy)
    lr: float = pydantic.Field(3e-3, gt=0)  # AdamW
    warmup_steps: int = pydantic.Field(100, ge=0)  # BC only, before SequenceMatch mixes in
    alpha: float = pydantic.Field(0.2, ge=0, le=1)  # (1 - alpha) BC + alpha SequenceMatch
    chi2_coef: float = pydantic.Field(0.5, gt=0)
    gamma: float = pydantic.Field(0.99, gt=0, le=1)
    policy_weight: float = pydantic.Field(0.5, ge=0, le=1)  # on-policy: rollouts' share
    # -- data
    max_pairs: int = pydantic.Field(6, ge=1)  # bracket pairs per word: uniform in 1..max_pairs
    p_noise: float = pydantic.Field(0.3, ge=0, le=1)  # augmentation: noise before a token
    max_noise: int = pydantic.Field(2, ge=1)  # noise tokens (then as many ⌫) at one place
    # -- model
    dim: int = pydantic.Field(64, ge=8)
    n_layers: int = pydantic.Field(2, ge=1)
    n_heads: int = pydantic.Field(4, ge=1)
    # -- evaluation
    eps: float = pydantic.Field(0.1, ge=0, le=1)  # P(a sampled action becomes noise)
    n_eval: int = pydantic.Field(200, ge=1)  # sampled words per method
    max_actions: int = pydantic.Field(40, ge=1)  # action budget per word (⌫ included)
    eval_seed: int = 123  # the sampling generator's seed (`sample` uses it too)
    n_show: int = pydantic.Field(4, ge=0)  # sampled words shown per method
    seed: int = 0  # model init, data stream (rollouts: seed + 10000)
    progress_bar: bool = True  # a tqdm bar per method
    # a model this small runs fastest on one thread (more threads only contend); 0 = torch's
    threads: int = pydantic.Field(1, ge=0)

    @pydantic.model_validator(mode="after")
    def _check(self) -> SequenceMatchConfig:
        if not self.methods:
            raise ValueError(
                "methods must name at least one of mle, bc-augmented, sequencematch, "
                "sequencematch-onpolicy"
            )
        dup = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dup:
            raise ValueError(f"methods lists {', '.join(dup)} more than once")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if any(m in SM_METHODS for m in self.methods) and self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps}): "
                "otherwise the sequencematch methods never leave the BC warm-up"
            )
        if self.methods != ["mle"] and self.p_noise == 0:
            raise ValueError(
                "p_noise must be > 0 for bc-augmented and sequencematch (with 0 the "
                "augmented data has no noise and no ⌫, and they are MLE)"
            )
        return self

    @property
    def max_seq_len(self) -> int:
        """Context that fits the longest augmented word and the longest sampled action row."""
        word = 2 * self.max_pairs + 2
        augmented = 1 + (word - 1) * (1 + 2 * self.max_noise)
        return max(MIN_SEQ_LEN, augmented, self.max_actions + 1)


# -- training and evaluation --------------------------------------------------------------------


def build_model(config: SequenceMatchConfig) -> Transformer:
    """The model every method starts from: initialised from ``config.seed`` (the global
    torch RNG is left as it was)."""
    cfg = TransformerConfig(
        vocab_size=DYCK_VOCAB,
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        max_seq_len=config.max_seq_len,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return Transformer(cfg)


def train_config(config: SequenceMatchConfig) -> TrainConfig:
    """The Trainer's settings for one method: plain AdamW at a constant ``config.lr`` (no
    warm-up, no decay, no clipping) on one CPU process, as the measured numbers were
    trained; betas and weight decay are ``torch.optim.AdamW``'s defaults (see
    :func:`train_method` for the decay of the norm gains)."""
    return TrainConfig.build(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        betas=ADAMW_BETAS,
        weight_decay=ADAMW_WEIGHT_DECAY,
        decay_vectors=True,  # torch.optim.AdamW(model.parameters()) decays every parameter
        warmup_steps=0,
        min_lr_ratio=1.0,  # lr_factor is then exactly 1.0 at every step
        grad_clip=0.0,
        seed=config.seed,  # the data generator's seed: the words and the augmentation
        device="cpu",
        autocast="off",
        log_every=max(1, config.steps // 5),
        progress=config.progress_bar,
    )


def method_words(
    method: str, config: SequenceMatchConfig, generator: torch.Generator, batch_size: int
) -> AugmentedBatch:
    """One step's training words: ``batch_size`` Dyck-2 words from ``generator``, augmented
    with noise and backspaces (none for ``mle``; the draws are the same either way)."""
    return augment_with_backspaces(
        [dyck2(generator, config.max_pairs) for _ in range(batch_size)],
        bksp_id=DYCK_BKSP,
        noise_ids=DYCK_NOISE,
        p_noise=0.0 if method == "mle" else config.p_noise,
        max_noise=config.max_noise,
        pad_id=DYCK_EOS,
        generator=generator,
    )


def method_loss(
    method: str,
    config: SequenceMatchConfig,
    model: Transformer,
    batch: AugmentedBatch,
    *,
    step: int,
    rollouts: torch.Generator,
) -> Tensor:
    """The loss of ``method`` on ``batch`` at update ``step``: BC for ``mle`` and
    ``bc-augmented``; ``mixed_loss`` for the SequenceMatch methods, the on-policy one with
    ``config.batch_size`` rollouts drawn from ``rollouts`` after the warm-up."""
    logits = backtrack_logits(model, batch.actions, DYCK_BKSP)  # (B, T, 9)
    if method in ("mle", "bc-augmented"):
        return bc_loss(logits, batch)
    roll, plog = None, None
    if method == "sequencematch-onpolicy" and step >= config.warmup_steps:
        roll = sample_rollouts(
            model,
            torch.full((config.batch_size, 1), DYCK_BOS),
            bksp_id=DYCK_BKSP,
            eos_id=DYCK_EOS,
            max_actions=config.max_actions,
            pad_id=DYCK_EOS,
            generator=rollouts,
        )
        plog = backtrack_logits(model, roll.actions, DYCK_BKSP)
    return mixed_loss(
        logits,
        batch,
        step=step,
        warmup_steps=config.warmup_steps,
        alpha=config.alpha,
        eos_id=DYCK_EOS,
        gamma=config.gamma,
        chi2_coef=config.chi2_coef,
        policy_logits=plog,
        policy_batch=roll,
        policy_weight=config.policy_weight,
    )


def train_method(
    method: str, config: SequenceMatchConfig, progress: Progress
) -> tuple[Transformer, list[float], float]:
    """Train one method through :class:`~ar_core.trainer.Trainer`; returns the model (eval
    mode), the loss of every step and the training seconds. Same seed for every method:
    same init, same words (the Trainer's data generator is seeded with ``config.seed``;
    the rollouts' with ``config.seed + 10000``)."""
    if method not in get_args(Method):
        raise ConfigError(f"unknown method {method!r}; expected one of {get_args(Method)}")
    g_roll = torch.Generator().manual_seed(10_000 + config.seed)

    def words(generator: torch.Generator, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
        batch = method_words(method, config, generator, batch_size)
        return batch.actions, batch.expert, batch.valid  # tensors, batch first: the Trainer's

    def loss_fn(model: Transformer, rows: tuple[Tensor, Tensor, Tensor], *, step: int) -> Tensor:
        return method_loss(method, config, model, AugmentedBatch(*rows), step=step, rollouts=g_roll)

    trainer = Trainer(build_model(config), loss_fn, words, train_config(config))
    every = max(1, config.steps // 5)
    losses: list[float] = []
    start = time.perf_counter()
    for until in [*range(every, config.steps, every), config.steps]:
        losses += trainer.train(until=until)
        progress(f"[{method}] step {until}/{config.steps}: loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - start
    model = trainer.model
    assert isinstance(model, Transformer)
    return model.eval(), losses, seconds


def sample_actions(
    model: Transformer, n: int, config: SequenceMatchConfig
) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` words sampled with noise (probability ``config.eps`` per action) from the
    generator seeded with ``config.eval_seed``: (raw action rows with ⌫, the words they leave).
    The words are exactly those of ``sample_with_noise`` with the same arguments."""
    roll = sample_rollouts(
        model,
        torch.full((n, 1), DYCK_BOS),
        bksp_id=DYCK_BKSP,
        eos_id=DYCK_EOS,
        max_actions=config.max_actions,
        noise_ids=DYCK_NOISE,
        eps=config.eps,
        pad_id=DYCK_EOS,
        generator=torch.Generator().manual_seed(config.eval_seed),
    )
    raw = [row[valid].tolist() for row, valid in zip(roll.actions, roll.valid, strict=True)]
    return raw, [apply_backspaces(r, DYCK_BKSP) for r in raw]


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / n)


def z_test_greater(p1: float, p0: float, n: int) -> tuple[float, float] | None:
    """One-sided two-proportion z-test of ``p1 > p0`` (both over ``n`` samples, pooled
    variance): ``(z, p-value)``, or None when the pooled variance is 0 (both 0 or both 1)."""
    pooled = (p1 + p0) / 2
    var = pooled * (1 - pooled) * 2 / n
    if var <= 0:
        return None
    z = (p1 - p0) / math.sqrt(var)
    return z, 0.5 * math.erfc(z / math.sqrt(2))  # upper tail of N(0, 1)


def show_sample(method: str, raw: Sequence[int], word: Sequence[int]) -> str:
    mark = "\u2713 valid  " if dyck2_valid(word) else "\u2717 invalid"
    cut = "" if raw[-1] == DYCK_EOS else " (action budget)"
    return f"[{method}] {mark} {dyck2_show(raw)}  \u2192  {dyck2_show(word)}{cut}"


def validity_table(
    config: SequenceMatchConfig,
    valid: dict[str, int],
    n: int,
    seconds: dict[str, float] | None = None,
) -> Table:
    """Validity per method from the count of valid words out of ``n``; with ``seconds``,
    a training-time column."""
    base = valid["mle"] / n if "mle" in valid else None
    rows: list[list[object]] = []
    for method, k in valid.items():
        p = k / n
        row: list[object] = [method, f"{k}/{n}", round(p, 4), round(binomial_se(p, n), 4)]
        if seconds is not None:
            row.append(round(seconds[method], 2))
        test = None if base is None or method == "mle" else z_test_greater(p, base, n)
        row += ["-", "-"] if test is None else [round(test[0], 2), f"{test[1]:.2g}"]
        rows.append(row)
    columns = ["method", "valid", "validity", "\u00b1 s.e.", *(["train s"] if seconds else [])]
    note = (
        f"{n} words per method sampled with eps = {config.eps} (each action replaced by a "
        f"random noise token with that probability), generator seed {config.eval_seed}; "
        "s.e. = sqrt(p(1-p)/n); z and p: one-sided pooled two-proportion z-test of "
        "'validity > MLE's'"
    )
    if base is None:
        note += " (MLE not trained: no test)"
    return Table(
        f"Dyck-2 validity under sampling noise (eps = {config.eps})",
        [*columns, "z vs MLE", "p"],
        rows,
        note=note,
    )


def model_dir(out_dir: Path, method: str) -> Path:
    return Path(out_dir) / "models" / method


def load_method_model(checkpoint_dir: Path, method: str) -> Transformer:
    """The model ``run`` saved for ``method``; a missing or corrupted folder is a
    ``CheckpointError`` naming the method."""
    path = model_dir(checkpoint_dir, method)
    try:
        model = Transformer.from_pretrained(path)
    except CheckpointError as exc:
        raise CheckpointError(
            f"the {method} model in {path} cannot be loaded ({exc}); "
            "re-run ar train text-sequencematch"
        ) from None
    if model.vocab_size != DYCK_VOCAB:
        raise CheckpointError(
            f"the {method} model in {path} has vocab_size {model.vocab_size}, not the "
            f"Dyck-2 vocabulary's {DYCK_VOCAB}; re-run ar train text-sequencematch"
        )
    return model.eval()


# -- the recipe ---------------------------------------------------------------------------------


class SequenceMatchRecipe(RecipeBase):
    name = "text-sequencematch"
    description = (
        "SequenceMatch (backspace action): Dyck-2 validity under sampling noise vs MLE and BC"
    )
    config_class = SequenceMatchConfig
    in_demo = False

    def demo_config(self) -> SequenceMatchConfig:
        # the measured settings themselves fit the demo's minute: on one thread of a busy
        # 2-core machine the three default methods took 40 s in all (6-12 s of training
        # each, 1-3 s of sampling, ~4 s of one-time torch.optim import) and gave validity
        # MLE 0.575, BC on augmented data 0.945, SequenceMatch 0.895 (z = 7.3 over MLE)
        return SequenceMatchConfig()

    def _run(self, config: SequenceMatchConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        valid: dict[str, int] = {}
        seconds: dict[str, float] = {}
        curves: dict[str, list[tuple[float, float]]] = {}
        shown: list[str] = []
        for method in config.methods:
            progress(f"training {method}: {config.steps} steps of {config.batch_size} words")
            model, losses, secs = train_method(method, config, progress)
            model.save_pretrained(model_dir(out_dir, method))
            progress(f"sampling {config.n_eval} words from {method} with eps = {config.eps}")
            raw, words = sample_actions(model, config.n_eval, config)
            valid[method] = sum(map(dyck2_valid, words))
            seconds[method] = secs
            curves[f"{method} loss"] = [(float(i), x) for i, x in enumerate(losses)]
            shown += [show_sample(method, r, w) for r, w in list(zip(raw, words))[: config.n_show]]
            progress(
                f"{method}: {valid[method]}/{config.n_eval} valid "
                f"({valid[method] / config.n_eval:.3f}; {secs:.1f} s training)"
            )
        validity = {m: k / config.n_eval for m, k in valid.items()}
        table = validity_table(config, valid, config.n_eval, seconds)
        metrics = {f"validity/{m}": round(p, 4) for m, p in validity.items()}
        for m, p in validity.items():
            test = (
                None
                if m == "mle" or "mle" not in validity
                else z_test_greater(p, validity["mle"], config.n_eval)
            )
            if test is not None:
                metrics[f"p_vs_mle/{m}"] = test[1]
        summary = ", ".join(f"{m} {p:.3f}" for m, p in validity.items())
        return RecipeResult(
            title="text-sequencematch: Dyck-2 validity under sampling noise",
            summary=(
                f"{config.steps} steps per method (seed {config.seed}); validity of "
                f"{config.n_eval} words sampled with eps = {config.eps}: {summary}"
            ),
            tables=[table],
            curves=curves,
            samples=shown,
            metrics=metrics,
        )

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        checkpoint_dir = Path(checkpoint_dir)
        config: SequenceMatchConfig = self.read_config(checkpoint_dir)
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        models = {m: load_method_model(checkpoint_dir, m) for m in config.methods}
        valid: dict[str, int] = {}
        shown: list[str] = []
        with torch_threads(config.threads):
            for method, model in models.items():
                progress(f"sampling {n} words from {method} with eps = {config.eps}")
                raw, words = sample_actions(model, n, config)
                valid[method] = sum(map(dyck2_valid, words))
                shown += [show_sample(method, r, w) for r, w in zip(raw, words, strict=True)]
        return RecipeResult(
            title="text-sequencematch samples",
            tables=[validity_table(config, valid, n)],
            samples=shown,
            metrics={f"validity/{m}": round(k / n, 4) for m, k in valid.items()},
        )


recipe = SequenceMatchRecipe()

__all__ = [
    "DYCK_BKSP",
    "DYCK_BOS",
    "DYCK_EOS",
    "DYCK_NOISE",
    "DYCK_PAIRS",
    "DYCK_VOCAB",
    "SequenceMatchConfig",
    "SequenceMatchRecipe",
    "dyck2",
    "dyck2_show",
    "dyck2_valid",
    "method_loss",
    "method_words",
    "recipe",
    "sample_actions",
    "train_config",
    "train_method",
]
