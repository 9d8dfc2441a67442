"""Recipe ``core-diagnostics``: the diagnostics of :mod:`ar_core.diagnostics` on known
processes, each against its exact value.

1. A grammar with known probabilities (an order-2 probabilistic automaton: the state is
   the last two symbols; sparse Dirichlet rows) trains a small ar-core Transformer.
   Head entropy of the exact, the count-fitted and the trained model against the
   grammar's conditional entropy; the pull-back Fisher metric of the Transformer's head
   at a real hidden state against finite-difference KL / eps^2; the information-surplus
   probe of its hidden states on the grammar (order 2: > 0) and on an order-1 chain (~0).
2. Directed information: Massey's conservation law on an enumerated random joint; a
   Gaussian VAR(1) where x drives y: the paired-AR estimate against the analytic rate
   for growing n, both directions, and statsmodels' Granger test as the cross-check.
3. Next-element prediction (Tax et al. 2018): oracle, Markov of each order, all-k
   Markov, HMM (hmmlearn), LSTM and the Transformer by Brier score and accuracy.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydantic
import torch

from ar_core import diagnostics as dg
from ar_core.diagnostics.plot import line_plot
from ar_core.recipes import Progress, RecipeResult, Table
from ar_core.recipes.base import RecipeBase


class DiagnosticsConfig(pydantic.BaseModel):
    """Settings of ``core-diagnostics``; the defaults run in a few minutes on 2 CPU cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    vocab_size: int = pydantic.Field(5, ge=2, le=12)  # 5^2 = 25 automaton states
    concentration: float = pydantic.Field(0.3, gt=0)  # Dirichlet rows: small = sparse grammar
    train_sequences: int = pydantic.Field(400, ge=8)
    test_sequences: int = pydantic.Field(400, ge=8)
    length: int = pydantic.Field(32, ge=8, le=256)
    # the Transformer: within 0.02 nats and 0.01 Brier excess of the oracle at these settings
    dim: int = pydantic.Field(64, ge=8)
    n_layers: int = pydantic.Field(2, ge=1)
    n_heads: int = pydantic.Field(4, ge=1)
    steps: int = pydantic.Field(300, ge=1)
    batch_size: int = pydantic.Field(32, ge=1)
    lr: float = pydantic.Field(5e-3, gt=0)
    lstm_steps: int = pydantic.Field(300, ge=1)
    markov_orders: list[int] = [1, 2, 3]
    all_k_max_order: int = pydantic.Field(3, ge=1)
    all_k_min_count: int = pydantic.Field(20, ge=1)  # longer contexts must be seen this often
    hmm_states: int = pydantic.Field(10, ge=0)  # 0 = no HMM row (needs ar-core[diagnostics])
    hmm_iters: int = pydantic.Field(20, ge=1)
    var_samples: list[int] = [1_000, 10_000, 100_000]
    var_lags: int = pydantic.Field(8, ge=1)
    fisher_eps: list[float] = [1e-1, 1e-2, 1e-3, 1e-4]
    granger: bool = True  # statsmodels' cross-check (needs ar-core[diagnostics])
    seed: int = 0
    progress_bar: bool = True  # tqdm bars while the Transformer and the LSTM train
    threads: int = pydantic.Field(1, ge=0)

    @pydantic.field_validator("markov_orders", "var_samples")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError(f"must list positive integers, got {v}")
        return v

    @pydantic.field_validator("fisher_eps")
    @classmethod
    def _eps(cls, v: list[float]) -> list[float]:
        if not v or min(v) <= 0:
            raise ValueError(f"must list positive step sizes, got {v}")
        return sorted(v, reverse=True)


VAR_A = [[0.5, 0.0], [0.6, 0.4]]  # x_t = .5 x_{t-1} + e; y_t = .6 x_{t-1} + .4 y_{t-1} + f
VAR_NOISE = [1.0, 1.0]


def _r(x: float, n: int = 4) -> float:
    return round(float(x), n) + 0.0  # + 0.0: no "-0.0" in the tables


class DiagnosticsRecipe(RecipeBase):
    name = "core-diagnostics"
    description = "diagnostics on known processes: entropy, Fisher, surplus, directed info, Brier"
    config_class = DiagnosticsConfig
    # demo_config measured at 22 s of CPU (70 s wall at load 13) on the 2 shared cores: too
    # close to the 25 s limit of `ar demo` to leave a margin; run it with ar train
    in_demo = False

    def demo_config(self) -> DiagnosticsConfig:
        return DiagnosticsConfig(
            train_sequences=200,
            test_sequences=200,
            steps=150,
            lstm_steps=100,
            hmm_states=5,
            hmm_iters=10,
            var_samples=[1_000, 10_000],
            granger=False,
        )

    def _run(self, config: DiagnosticsConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        out_dir.mkdir(parents=True, exist_ok=True)
        V, seed = config.vocab_size, config.seed
        grammar = dg.MarkovChain.random(2, V, seed=seed + 7, concentration=config.concentration)
        train = grammar.sample(config.train_sequences, config.length, seed=seed + 1)
        test = grammar.sample(config.test_sequences, config.length, seed=seed + 2)
        H = grammar.conditional_entropy()
        tables: list[Table] = []
        metrics: dict[str, float] = {"analytic_entropy": _r(H)}

        progress(f"training the Transformer ({config.steps} steps)")
        start = time.perf_counter()
        model, tf_losses = dg.fit_transformer(
            train,
            V,
            dim=config.dim,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=seed,
            progress=config.progress_bar,
        )
        tf_seconds = time.perf_counter() - start
        model.save_pretrained(out_dir / "model")  # type: ignore[operator]

        # -- 1a head entropy -----------------------------------------------------------
        progress("head entropy")
        counts = dg.fit_markov(train, V, 2, alpha=0.5)
        ctx = torch.arange(V * V)
        fitted = dg.MarkovChain(
            counts(torch.stack([ctx // V, ctx % V], 1))[:, 1].numpy(), 2
        )  # the count model's table read back through its predictions
        rows = []
        for key, label, m in (
            ("exact", "exact (TabularLM)", dg.TabularLM(grammar)),
            ("counts", "counts, order 2", dg.TabularLM(fitted)),
            ("transformer", "Transformer", model),
        ):
            he = dg.head_entropy(m, test, context=2)
            rows.append([label, _r(H), _r(he.entropy), _r(he.entropy - H), _r(he.log_loss)])
            metrics[f"entropy_gap/{key}"] = _r(he.entropy - H)
        tables.append(
            Table(
                "head entropy vs the grammar's conditional entropy (nats)",
                ["model", "analytic H(W_t | W_t-2, W_t-1)", "head entropy", "gap", "log-loss"],
                rows,
                note=f"{config.test_sequences} held-out strings of {config.length}, positions >= 2",
            )
        )

        # -- 1b Fisher metric --------------------------------------------------------------
        progress("pull-back Fisher metric")
        h = model(test[:1]).hidden[0, -1].detach().double()  # type: ignore[operator]
        v = torch.randn(
            h.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        fisher = dg.fisher_check(dg.output_head(model), h, v, config.fisher_eps)
        tables.append(
            Table(
                "pull-back Fisher metric of the Transformer's head: KL / eps^2 -> v^T G v / 2",
                ["eps", "KL(p_h || p_h+eps v) / eps^2", "v^T G v / 2", "relative gap"],
                [[e, _r(k, 6), _r(g, 6), f"{gap:.2e}"] for e, k, g, gap in fisher],
                note="h: the last hidden state of a test string; v ~ N(0, I), seed " + str(seed),
            )
        )
        metrics["fisher_gap_smallest_eps"] = float(f"{fisher[-1][3]:.3e}")
        fisher_svg = line_plot(
            out_dir / "fisher.svg",
            {"relative gap": [(e, max(g, 1e-16)) for e, _, _, g in fisher]},
            title="|KL/eps^2 - vGv/2| / (vGv/2)",
            xlabel="eps",
            ylabel="relative gap",
            logx=True,
            logy=True,
        )

        # -- 1c information surplus ---------------------------------------------------------
        progress("information-surplus probe")
        order1 = dg.MarkovChain.random(1, V, seed=seed + 5)
        x1 = order1.sample(config.test_sequences, config.length, seed=seed + 3)
        rows = []
        for key, label, m, data, chain in (
            ("transformer/order2", "Transformer", model, test, "order 2 (grammar)"),
            ("transformer/order1", "Transformer", model, x1, "order 1"),
            ("exact/order2", "exact (TabularLM)", dg.TabularLM(grammar), test, "order 2 (grammar)"),
        ):
            s = dg.model_information_surplus(m, data, seed=seed)
            rows.append([label, chain, _r(s.surplus), _r(s.stderr), s.samples])
            metrics[f"surplus/{key}"] = _r(s.surplus)
        tables.append(
            Table(
                "information surplus I(H_t; W_t+1 | W_t), nats (held-out probe gap)",
                ["hidden states of", "strings", "surplus", "stderr", "samples"],
                rows,
                note="~0 on an order-1 chain whatever H_t is; > 0 on order 2 when H_t keeps W_t-1",
            )
        )

        # -- 2 directed information ------------------------------------------------------------
        progress("directed information")
        rng = np.random.default_rng(seed)
        joint = rng.random((2,) * 6) ** 3
        joint /= joint.sum()
        di = dg.directed_information_exact(joint, 3)
        tables.append(
            Table(
                "Massey's conservation law on an enumerated random joint (n = 3, binary)",
                ["I(X->Y)", "I(0*Y->X)", "sum", "I(X;Y)", "|sum - I(X;Y)|"],
                [
                    [
                        _r(di.forward, 6),
                        _r(di.backward, 6),
                        _r(di.forward + di.backward, 6),
                        _r(di.mutual, 6),
                        f"{abs(di.forward + di.backward - di.mutual):.1e}",
                    ]
                ],
            )
        )
        fwd, back = dg.var1_directed_information(VAR_A, VAR_NOISE)
        rows, est_f, est_b = [], [], []
        for n in config.var_samples:
            z = dg.simulate_var1(VAR_A, VAR_NOISE, n, seed=seed + 1)
            f = dg.gaussian_directed_information(z[:, 0], z[:, 1], lags=config.var_lags)
            b = dg.gaussian_directed_information(z[:, 1], z[:, 0], lags=config.var_lags)
            est_f.append((float(n), f))
            est_b.append((float(n), b))
            row: list[object] = [n, _r(fwd), _r(f, 5), _r(back), _r(b, 5)]
            if config.granger:
                row += [
                    f"{dg.granger_test(z[:, 0], z[:, 1], lags=2):.1e}",
                    _r(dg.granger_test(z[:, 1], z[:, 0], lags=2), 3),
                ]
            rows.append(row)
        metrics["di_forward_error"] = _r(abs(est_f[-1][1] - fwd), 5)
        metrics["di_backward"] = _r(est_b[-1][1], 5)
        tables.append(
            Table(
                "directed information rate on a Gaussian VAR(1), nats per step",
                ["n", "analytic X->Y", "estimate X->Y", "analytic Y->X", "estimate Y->X"]
                + (["Granger p X->Y", "Granger p Y->X"] if config.granger else []),
                rows,
                note=f"A = {VAR_A}, unit noises; paired linear AR fits with {config.var_lags} lags",
            )
        )
        di_svg = line_plot(
            out_dir / "directed.svg",
            {
                "estimate X->Y": est_f,
                "analytic X->Y": [(x, fwd) for x, _ in est_f],
                "estimate Y->X": est_b,
            },
            title="directed information rate vs n",
            xlabel="n",
            ylabel="nats / step",
            logx=True,
        )

        # -- 3 next-element prediction -------------------------------------------------------
        progress("next-element prediction")
        oracle = grammar.next_probs(test)
        preds: dict[str, torch.Tensor] = {"oracle": oracle}
        for k in config.markov_orders:
            preds[f"Markov order {k}"] = dg.fit_markov(train, V, k)(test)
        preds[f"all-k Markov (k <= {config.all_k_max_order})"] = dg.fit_all_k_markov(
            train, V, config.all_k_max_order, min_count=config.all_k_min_count
        )(test)
        if config.hmm_states:
            preds[f"HMM ({config.hmm_states} states)"] = dg.fit_hmm(
                train, V, config.hmm_states, iters=config.hmm_iters, seed=seed
            )(test)
        lstm, lstm_losses = dg.fit_lstm(
            train, V, steps=config.lstm_steps, seed=seed, progress=config.progress_bar
        )
        preds["LSTM"] = lstm(test)
        preds["Transformer"] = dg.transformer_predictor(model)(test)
        rows = []
        for label, p in preds.items():
            sc = dg.score_predictions(p, test, start=2, oracle=oracle)
            rows.append(
                [label, _r(sc.brier), _r(sc.accuracy), _r(sc.log_loss), _r(sc.excess or 0.0, 5)]
            )
            metrics[f"brier/{label}"] = _r(sc.brier)
        tables.append(
            Table(
                "next-element prediction on the grammar (Brier: lower is better)",
                ["model", "Brier", "accuracy", "log-loss", "excess |p - q|^2 vs oracle"],
                rows,
                note=(
                    f"{config.test_sequences} x {config.length - 2} held-out elements; "
                    f"trained on {config.train_sequences} strings; seed {seed}"
                ),
            )
        )
        return RecipeResult(
            title="core-diagnostics: Markov category, directed information, next-element prediction",
            summary=(
                f"grammar: order-2 automaton over {V} symbols, H = {H:.4f} nats; Transformer "
                f"{config.n_layers} layers x {config.dim}, {config.steps} steps in {tf_seconds:.1f} s"
            ),
            tables=tables,
            images=[
                ("Fisher check: relative gap vs eps", fisher_svg),
                ("directed information", di_svg),
            ],
            curves={
                "Transformer loss": [(float(i), x) for i, x in enumerate(tf_losses)],
                "LSTM loss": [(float(i), x) for i, x in enumerate(lstm_losses)],
            },
            metrics=metrics,
        )

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        """``n`` strings from the saved Transformer after 2-symbol prompts of the grammar,
        scored by the grammar: their mean log-loss per element against its entropy."""
        from ar_core.generation import GenerationConfig, generate
        from ar_core.model import Transformer

        config = self.read_config(checkpoint_dir)
        progress(f"loading {Path(checkpoint_dir) / 'model'}")
        model = Transformer.from_pretrained(Path(checkpoint_dir) / "model")
        grammar = dg.MarkovChain.random(
            2, config.vocab_size, seed=config.seed + 7, concentration=config.concentration
        )
        prompts = grammar.sample(n, 2, seed=config.seed + 4)
        gen = GenerationConfig(max_new_tokens=config.length - 2, temperature=1.0, seed=config.seed)
        strings = generate(model, prompts, gen, strategy="sample").sequences.cpu()  # (n, L)
        q = grammar.next_probs(strings)[:, 1:-1]  # (n, L-2, V): the grammar's law of 2..L-1
        nll = -q.gather(-1, strings[:, 2:, None]).squeeze(-1).clamp_min(1e-300).log()
        H = grammar.conditional_entropy()
        return RecipeResult(
            title="core-diagnostics samples",
            summary=(
                f"{n} strings from the Transformer: grammar log-loss {float(nll.mean()):.4f} "
                f"nats per element (the grammar's own entropy: {H:.4f})"
            ),
            tables=[
                Table(
                    "samples scored by the grammar",
                    ["strings", "elements", "grammar log-loss", "grammar entropy"],
                    [[n, int(nll.numel()), _r(float(nll.mean())), _r(H)]],
                )
            ],
            samples=[" ".join(str(int(t)) for t in row) for row in strings],
            metrics={"grammar_log_loss": _r(float(nll.mean())), "entropy": _r(H)},
        )


recipe = DiagnosticsRecipe()
