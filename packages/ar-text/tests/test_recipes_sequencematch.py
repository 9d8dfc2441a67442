"""Tests of the recipe ``text-sequencematch`` (ar_text.recipes.sequencematch), on tiny configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ar_core.errors import CheckpointError, ConfigError
from ar_core.model import Transformer
from ar_core.recipes import Recipe, RecipeResult, build_config, write_recipe_file
from ar_text import sequencematch as sm
from ar_text.recipes.sequencematch import (
    DYCK_BKSP,
    DYCK_BOS,
    DYCK_EOS,
    DYCK_NOISE,
    SequenceMatchConfig,
    build_model,
    dyck2,
    dyck2_show,
    dyck2_valid,
    method_loss,
    method_words,
    recipe,
    sample_actions,
    train_method,
    z_test_greater,
)

torch.set_num_threads(1)

TINY = dict(
    methods=["mle", "bc-augmented", "sequencematch", "sequencematch-onpolicy"],
    steps=6,
    warmup_steps=3,
    batch_size=4,
    max_pairs=3,
    dim=16,
    n_layers=1,
    n_heads=2,
    n_eval=24,
    max_actions=12,
    n_show=2,
    progress_bar=False,
)


def validity_by_recomputation(model: Transformer, config: SequenceMatchConfig, n: int) -> float:
    """The validity through the module's own public sampler, not the recipe's helper."""
    words = sm.sample_with_noise(
        model,
        torch.full((n, 1), DYCK_BOS),
        bksp_id=DYCK_BKSP,
        eos_id=DYCK_EOS,
        noise_ids=DYCK_NOISE,
        eps=config.eps,
        max_actions=config.max_actions,
        generator=torch.Generator().manual_seed(config.eval_seed),
    )
    return sum(dyck2_valid(w) for w in words) / n


Trained = tuple[Path, SequenceMatchConfig, RecipeResult, list[str]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    out = tmp_path_factory.mktemp("sequencematch")
    config = SequenceMatchConfig(**TINY)  # type: ignore[arg-type]
    write_recipe_file(out, recipe.name, config)
    messages: list[str] = []
    result = recipe.run(config, out, messages.append)
    return out, config, result, messages


def test_recipe_object() -> None:
    assert isinstance(recipe, Recipe)
    assert recipe.name == "text-sequencematch" and not recipe.in_demo
    demo = recipe.demo_config()
    assert isinstance(demo, SequenceMatchConfig)
    assert demo.methods == ["mle", "bc-augmented", "sequencematch"]  # on-policy: too slow


def test_end_to_end_files_table_curves_samples(trained: Trained) -> None:
    out, config, result, messages = trained
    methods = config.methods
    assert any(m.startswith("training sequencematch-onpolicy") for m in messages)
    assert any(m.startswith("mle: ") and " valid (" in m for m in messages)
    for m in methods:
        assert (out / "models" / m / "config.json").is_file()
        assert (out / "models" / m / "model.safetensors").is_file()
    (table,) = result.tables
    cols = ["method", "valid", "validity", "\u00b1 s.e.", "train s", "z vs MLE", "p"]
    assert table.columns == cols
    assert [r[0] for r in table.rows] == methods
    for method, count, p, se, secs, z, pval in table.rows:
        k = int(count.split("/")[0])
        assert count == f"{k}/{config.n_eval}" and p == round(k / config.n_eval, 4)
        # the progress line of the method reports the same count and training time
        (line,) = [m for m in messages if m.startswith(f"{method}: {count} valid ({p:.3f}; ")]
        said = float(line.rsplit("; ", 1)[1].removesuffix(" s training)"))
        assert abs(said - secs) <= 0.051, (line, secs)  # 1 and 2 decimals of one number
        assert se == round(math.sqrt(p * (1 - p) / config.n_eval), 4)
        assert result.metrics[f"validity/{method}"] == p
        if method == "mle":
            assert (z, pval) == ("-", "-")
        elif z != "-":  # a test exists unless both validities are 0 or both 1
            assert float(pval) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=0.02)
    # one loss curve per method, one point per step, finite
    assert sorted(result.curves) == sorted(f"{m} loss" for m in methods)
    for curve in result.curves.values():
        assert [x for x, _ in curve] == [float(i) for i in range(config.steps)]
        assert all(math.isfinite(y) for _, y in curve)
    # same seed for every method: the same data and init, so the warm-up (BC) steps of
    # the sequencematch methods are bc-augmented's steps exactly; MLE's data differs
    bc = result.curves["bc-augmented loss"][: config.warmup_steps]
    assert result.curves["sequencematch loss"][: config.warmup_steps] == bc
    assert result.curves["sequencematch-onpolicy loss"][: config.warmup_steps] == bc
    assert result.curves["mle loss"][0] != bc[0]
    assert result.curves["sequencematch loss"][-1] != result.curves["bc-augmented loss"][-1]
    # samples: n_show per method; the shown word is the raw actions with ⌫ applied
    assert len(result.samples) == config.n_show * len(methods)
    for line in result.samples:
        method, rest = line[1:].split("] ", 1)
        assert method in methods
        raw, word = rest.split("  \u2192  ")
        raw_ids = [DYCK_BOS] + ["^$()[]ab\u232b".index(ch) for ch in raw.split()[-1]]
        final = sm.apply_backspaces(raw_ids, DYCK_BKSP)
        assert word.removesuffix(" (action budget)") == dyck2_show(final)
        assert rest.startswith("\u2713 valid") == dyck2_valid(final)


def test_validity_equals_recomputation_with_the_reloaded_model(trained: Trained) -> None:
    out, config, result, _ = trained
    for method, count, *_ in result.tables[0].rows:
        model = Transformer.from_pretrained(out / "models" / method).eval()
        k = validity_by_recomputation(model, config, config.n_eval) * config.n_eval
        assert count == f"{round(k)}/{config.n_eval}"


def test_sample_reloads_and_reproduces(trained: Trained) -> None:
    out, config, result, _ = trained
    again = recipe.sample(out, 5, lambda _: None)
    assert len(again.samples) == 5 * len(config.methods)
    model = Transformer.from_pretrained(out / "models" / "sequencematch").eval()
    row = next(r for r in again.tables[0].rows if r[0] == "sequencematch")
    assert row[1] == f"{round(validity_by_recomputation(model, config, 5) * 5)}/5"
    assert "train s" not in again.tables[0].columns  # no training when only sampling
    # n = n_eval with the same seed is the run's evaluation again
    full = recipe.sample(out, config.n_eval, lambda _: None)
    assert [r[:4] for r in full.tables[0].rows] == [r[:4] for r in result.tables[0].rows]


def test_corrupted_or_missing_model_is_refused(tmp_path: Path) -> None:
    config = SequenceMatchConfig(**{**TINY, "methods": ["mle", "sequencematch"]})  # type: ignore[arg-type]
    write_recipe_file(tmp_path, recipe.name, config)
    recipe.run(config, tmp_path, lambda _: None)
    weights = tmp_path / "models" / "sequencematch" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="sequencematch model .* re-run ar train"):
        recipe.sample(tmp_path, 2, lambda _: None)
    weights.parent.rename(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="sequencematch model"):
        recipe.sample(tmp_path, 2, lambda _: None)
    (tmp_path / "recipe.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupted"):
        recipe.sample(tmp_path, 2, lambda _: None)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"methods": ["mle", "beam"]}, "methods"),
        ({"methods": []}, "methods must name"),
        ({"methods": ["mle", "mle"]}, "mle more than once"),
        ({"steps": 100}, r"warmup_steps \(100\) must be below steps \(100\)"),
        ({"eps": 1.5}, "eps"),
        ({"p_noise": 0.0}, "p_noise must be > 0"),
        ({"dim": 30}, r"dim \(30\) must be divisible by n_heads"),
        ({"n_eval": 0}, "n_eval"),
        ({"temperature": 1.0}, "temperature"),  # extra fields are refused
    ],
)
def test_bad_config_is_refused_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_config(SequenceMatchConfig, None, overrides)


def test_mle_only_and_warmup_as_long_as_training_are_allowed() -> None:
    c = build_config(SequenceMatchConfig, None, {"methods": ["mle"], "p_noise": 0, "steps": 50})
    assert isinstance(c, SequenceMatchConfig) and c.steps == 50


def test_max_seq_len_fits_the_longest_augmented_word() -> None:
    c = SequenceMatchConfig(max_pairs=20, max_noise=3, max_actions=10)
    g = torch.Generator().manual_seed(0)
    words = [dyck2(g, c.max_pairs) for _ in range(50)]
    longest = [DYCK_BOS] + [2, 3] * c.max_pairs + [DYCK_EOS]
    batch = sm.augment_with_backspaces(
        [*words, longest],
        bksp_id=DYCK_BKSP,
        noise_ids=DYCK_NOISE,
        p_noise=1.0,
        max_noise=c.max_noise,
        generator=g,
    )
    assert batch.actions.shape[1] <= c.max_seq_len
    assert c.max_seq_len == 1 + (2 * 20 + 1) * (1 + 2 * 3)  # the bound is reached
    assert SequenceMatchConfig(max_actions=200).max_seq_len == 201


def reference_losses(method: str, config: SequenceMatchConfig) -> tuple[list[float], Transformer]:
    """The loop the measured numbers were trained with: torch's AdamW with its defaults on
    every parameter, constant lr, no clipping; data from a generator seeded with the seed,
    rollouts from seed + 10000 (same words and losses as the recipe's)."""
    model = build_model(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed)
    g_roll = torch.Generator().manual_seed(10_000 + config.seed)
    losses = []
    for step in range(config.steps):
        batch = method_words(method, config, g, config.batch_size)
        loss = method_loss(method, config, model, batch, step=step, rollouts=g_roll)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, model


@pytest.mark.parametrize("method", ["mle", "sequencematch-onpolicy"])
def test_train_method_is_the_plain_adamw_loop(method: str) -> None:
    """The recipe trains through ar_core's Trainer, configured so that every step equals the
    plain loop's bit for bit (losses and final weights): the measured numbers depend on it."""
    config = SequenceMatchConfig(**{**TINY, "methods": [method]})  # type: ignore[arg-type]
    model, losses, _ = train_method(method, config, lambda _: None)
    ref_losses, ref_model = reference_losses(method, config)
    assert losses == ref_losses
    for (name, p), q in zip(
        model.state_dict().items(), ref_model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_train_method_refuses_unknown_method() -> None:
    with pytest.raises(ConfigError, match="unknown method 'beam'"):
        train_method("beam", SequenceMatchConfig(**TINY), lambda _: None)  # type: ignore[arg-type]


def test_sample_actions_words_are_sample_with_noise_words() -> None:
    config = SequenceMatchConfig(**{**TINY, "eps": 0.5})  # type: ignore[arg-type]
    model = train_method("bc-augmented", config.model_copy(update={"steps": 2}), lambda _: None)[0]
    raw, words = sample_actions(model, 12, config)
    ref = sm.sample_with_noise(
        model,
        torch.full((12, 1), DYCK_BOS),
        bksp_id=DYCK_BKSP,
        eos_id=DYCK_EOS,
        noise_ids=DYCK_NOISE,
        eps=0.5,
        max_actions=config.max_actions,
        generator=torch.Generator().manual_seed(config.eval_seed),
    )
    assert words == ref
    assert [sm.apply_backspaces(r, DYCK_BKSP) for r in raw] == words
    assert any(DYCK_BKSP in r for r in raw)  # at eps = 0.5 some noise gets deleted
    assert all(r[-1] == DYCK_EOS or len(r) == config.max_actions + 1 for r in raw)


def test_z_test_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for p1, p0, n in [(0.895, 0.575, 200), (0.5, 0.52, 100), (0.3, 0.1, 40)]:
        z, p = z_test_greater(p1, p0, n)  # type: ignore[misc]
        pooled = (p1 + p0) / 2
        assert z == pytest.approx((p1 - p0) / math.sqrt(pooled * (1 - pooled) * 2 / n))
        assert p == pytest.approx(float(stats.norm.sf(z)), rel=1e-9)
    assert z_test_greater(1.0, 1.0, 50) is None and z_test_greater(0.0, 0.0, 50) is None


def test_dyck2_show_and_checker_edges() -> None:
    assert dyck2_show([DYCK_BOS, 2, 4, 6, DYCK_BKSP, 5, 3, DYCK_EOS]) == "([a\u232b])$"
    assert dyck2_valid([DYCK_BOS, 2, 4, 5, 3, DYCK_EOS])
    assert not dyck2_valid([DYCK_BOS, 2, 6, 3, DYCK_EOS])  # a filler is never valid
    assert not dyck2_valid([DYCK_BOS, 2, 3])  # no EOS
    assert not dyck2_valid([DYCK_BOS, 3, 2, DYCK_EOS])
