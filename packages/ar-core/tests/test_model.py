"""Transformer: cached forward equals the uncached one; input validated before compute."""

from __future__ import annotations

import pytest
import torch

from ar_core import registry
from ar_core.errors import ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig, llama_ffn_hidden


def _backends() -> list[str]:
    """Every registered attention backend that can run float32 on the CPU."""
    names = []
    for name, backend in registry.attention_backends.items():
        reason = backend.unsupported_reason(
            device=torch.device("cpu"), dtype=torch.float32, mask=None
        )
        if reason is None:
            names.append(name)
    return names


def _model(backend: str = "auto", **kw: object) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig.from_name("tiny", attention_backend=backend, **kw)
    return Transformer(cfg).eval()


def test_presets_and_validators() -> None:
    tiny = TransformerConfig.from_name("tiny")
    assert (tiny.n_layers, tiny.dim) == (2, 128)
    medium = TransformerConfig.from_name("medium")
    assert (medium.n_layers, medium.dim) == (8, 768)
    assert tiny.hidden_dim == llama_ffn_hidden(128) == 512
    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        TransformerConfig(vocab_size=10, dim=100, n_layers=1, n_heads=3)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        TransformerConfig(vocab_size=10, dim=96, n_layers=1, n_heads=6, n_kv_heads=4)
    with pytest.raises(ConfigError, match="odd"):
        TransformerConfig(vocab_size=10, dim=12, n_layers=1, n_heads=4)
    with pytest.raises(ConfigError, match="available: tiny"):
        TransformerConfig.from_name("huge")


@pytest.mark.parametrize("backend", ["math", "sdpa", *_backends()])
def test_cached_chunks_equal_uncached(backend: str) -> None:
    model = _model(backend)
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, 16)
        parts = [model(x[:, a:b], cache=cache).logits for a, b in ((0, 5), (5, 6), (6, 12))]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [12, 12]


def test_gqa_and_mha_both_match_uncached() -> None:
    for kv in (1, 2, 4):
        model = _model(n_kv_heads=kv)
        x = torch.randint(0, 256, (1, 9))
        with torch.no_grad():
            full = model(x).logits
            cache = model.new_cache(1, 9)
            steps = [model(x[:, i : i + 1], cache=cache).logits for i in range(9)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_commit_false_leaves_entries_pending() -> None:
    model = _model()
    x = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        cache = model.new_cache(1, 8)
        model(x[:, :4], cache=cache)
        a = model(x[:, 4:], cache=cache, commit=False).logits
        b = model(x[:, 4:], cache=cache, commit=False).logits  # re-encoded in place
        assert cache.lengths.tolist() == [4]
        ref = model(x).logits[:, 4:]
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, ref, atol=1e-5, rtol=1e-5)


def test_explicit_positions_equal_default() -> None:
    model = _model()
    x = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        a = model(x).logits
        b = model(x, positions=torch.arange(5)).logits
        c = model(x, positions=torch.arange(5).expand(2, 5)).logits
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_query_embeds_replace_the_lookup() -> None:
    model = _model()
    x = torch.randint(0, 256, (1, 4))
    with torch.no_grad():
        a = model(x).logits
        b = model(torch.zeros_like(x), query_embeds=model.tok_embeddings(x)).logits
    torch.testing.assert_close(a, b)


def _probe_no_compute(model: Transformer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(model.tok_embeddings, "forward", lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize(
    ("tokens", "kwargs", "match"),
    [
        (torch.tensor([[1, 256, 3]]), {}, r"token id 256 at \(row 0, position 1\).*\[0, 256\)"),
        (torch.tensor([[1, -2]]), {}, r"token id -2 .*vocab_size=256"),
        (torch.tensor([1, 2]), {}, r"\(B, T\).*shape \(2,\)"),
        (torch.tensor([[1.0, 2.0]]), {}, "must be long.*float32"),
        (torch.zeros(1, 513, dtype=torch.long), {}, "513 positions exceed max_seq_len=512"),
        (torch.tensor([[1, 2]]), {"positions": torch.tensor([0, 1, 2])}, r"shape \(T,\) = \(2,\)"),
        (torch.tensor([[1, 2]]), {"positions": torch.tensor([0, 600])}, "position 600"),
        (torch.tensor([[1, 2]]), {"positions": torch.tensor([0.0, 1.0])}, "positions must be long"),
    ],
)
def test_bad_input_fails_before_compute(
    tokens: torch.Tensor, kwargs: dict, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model()
    calls = _probe_no_compute(model, monkeypatch)
    with pytest.raises(InputError, match=match):
        model(tokens, **kwargs)
    assert calls == []


def test_too_long_with_cache_names_both_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    cache = model.new_cache(1, 10)
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    calls = _probe_no_compute(model, monkeypatch)
    with pytest.raises(InputError, match=r"8 cached \+ 3 new = 11 .*max_len=10"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(InputError, match="holds 1 rows but tokens have batch size 2"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache)
    assert calls == []
    with pytest.raises(InputError, match="max_seq_len=512"):
        model.new_cache(1, 1000)


def test_tied_embeddings_share_storage() -> None:
    model = _model(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight


def test_registered_builder() -> None:
    build = registry.models.get("transformer")
    model = build(preset="tiny", n_layers=1)
    assert isinstance(model, Transformer) and model.cfg.n_layers == 1


@pytest.mark.parametrize("backend", _backends())
@torch.no_grad()
def test_eager_multi_token_passes_attend_over_the_used_cache_slots_only(backend, monkeypatch):
    # a 256-slot cache holding 13 / 9 entries (a crop leaves the host bound stale-high at
    # 13): a 4-token pass reads at most 13 + 4 keys per layer, and its logits equal the
    # uncached forward's
    from ar_core import model as model_module

    model = _model(backend)
    torch.manual_seed(1)
    x = torch.randint(0, model.vocab_size, (2, 17))
    cache = model.new_cache(2, max_len=256)
    model(x[:, :13], cache=cache)
    cache.crop(torch.tensor([13, 9]))
    seen: list[int | None] = []
    real = model_module.attend_planned

    def spy(q, k, v, plan):
        seen.append(plan.k_len)
        return real(q, k, v, plan)

    monkeypatch.setattr(model_module, "attend_planned", spy)
    new = torch.stack([x[0, 13:17], x[1, 9:13]])  # (2, 4)
    got = model(new, cache=cache).logits  # (2, 4, V)
    assert len(seen) == model.cfg.n_layers and set(seen) == {17}
    torch.testing.assert_close(got[0], model(x[:1]).logits[0, 13:17], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], model(x[1:, :13]).logits[0, 9:13], atol=1e-5, rtol=1e-5)
