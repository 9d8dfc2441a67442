"""The decoding benchmark's own pieces: its cache is reused only when validated, its edit
workload repeats the input, its degeneracy measure tells a loop from varied text, the big
section's Medusa heads are reused only when validated."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ar_core.model import Transformer, TransformerConfig
from ar_decoding.benchmarks import decoding as bench

TINY = dict(vocab_size=256, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64)


def test_distinct_ngrams_tells_a_loop_from_varied_text() -> None:
    assert bench.distinct_ngrams([32] * 100) == 1 / 93  # one 8-gram, 93 times
    loop = list(b"abc") * 30
    assert bench.distinct_ngrams(loop) == 3 / 83
    varied = list(range(100))
    assert bench.distinct_ngrams(varied) == 1.0


def test_cached_weights_are_reused_only_with_matching_settings_and_checksum(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**TINY))
    key = {"arch": TINY, "train": {"steps": 3}}
    bench._save_with_meta(model, tmp_path / "m", key, {"loss_last10": 1.0})
    meta = bench._meta_matches(tmp_path / "m", key)
    assert meta is not None and meta["loss_last10"] == 1.0
    assert meta["sha256"] == bench._weights_digest(tmp_path / "m")
    # other settings: not reused
    assert bench._meta_matches(tmp_path / "m", {**key, "train": {"steps": 4}}) is None
    # a bench.json whose checksum is not the weights' (weights replaced): not reused
    stored = json.loads((tmp_path / "m" / "bench.json").read_text())
    (tmp_path / "m" / "bench.json").write_text(json.dumps({**stored, "sha256": "0" * 64}))
    assert bench._meta_matches(tmp_path / "m", key) is None
    # a folder without bench.json (written before validation existed): not reused
    (tmp_path / "m" / "bench.json").unlink()
    assert bench._meta_matches(tmp_path / "m", key) is None


def test_edit_prompts_ask_for_a_copy_with_one_rename() -> None:
    code = b"".join(
        b"    def method_%d(self, value):\n        total = value + %d\n        return total\n"
        % (i, i)
        for i in range(40)
    )
    held = [b"class Thing:\n" + code]
    (prompt,) = bench.edit_prompts(held, 1, 300)
    text = bytes(prompt[0].tolist())
    before, after = text.split(b"\n# After renaming `")
    old, rest = after.split(b"` to `", 1)
    new, head = rest.split(b"`:\n", 1)
    assert new == old + b"_v2" and old in before
    # the edited copy starts with the snippet's first line, renamed
    first = before.removeprefix(b"# Before:\n").split(b"\n")[0] + b"\n"
    assert head == first.replace(old, new)


def test_grown_model_computes_the_base_function_until_noise_is_added() -> None:
    torch.manual_seed(0)
    base = Transformer(
        TransformerConfig(vocab_size=256, dim=128, n_layers=2, n_heads=2, n_kv_heads=1,
                          max_seq_len=64)
    ).eval()  # fmt: skip
    for p in base.parameters():  # weights far from the init: every part matters
        torch.nn.init.normal_(p, std=0.2)
    grown = bench.grow_transformer(base, 3, 2, noise=0.0)
    assert grown.cfg.dim == 384 and grown.cfg.n_layers == 4
    assert (grown.cfg.n_heads, grown.cfg.kv_heads, grown.cfg.head_dim) == (6, 3, 64)
    assert grown.cfg.model_dump() == {
        **bench._grown_arch(base.cfg.model_dump(), {"width": 3, "depth": 2}),
        "ffn_hidden": 3 * base.cfg.hidden_dim,
    }
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        ref = base(x).logits
        torch.testing.assert_close(grown(x).logits, ref, rtol=1e-4, atol=1e-4)
        # the cached decode of the grown model too (its KV cache has 3x the heads)
        cache = grown.new_cache(2, max_len=32)
        grown(x[:, :20], cache=cache)
        torch.testing.assert_close(
            grown(x[:, 20:], cache=cache).logits, ref[:, 20:], rtol=1e-4, atol=1e-4
        )
        noisy = bench.grow_transformer(base, 3, 2, noise=0.05)
        moved = (noisy(x).logits - ref).abs().max()
    assert 1e-3 < float(moved) < float(ref.abs().max())  # changed, not destroyed
    # the noise differs between the copies: the new blocks are no longer symmetric
    w = noisy.layers[0].ffn.w2.weight
    assert not torch.equal(w[:128], w[128:256])
    assert float(noisy.layers[1].attn.wo.weight.detach().abs().max()) > 0  # identity block too


def test_big_medusa_heads_are_reused_only_when_validated(tmp_path: Path, capsys) -> None:
    """The big section's Medusa heads: trained on the target's own continuations, reloaded
    (same weights) for the same target and settings, retrained when the stored checksum
    does not match the saved heads."""
    torch.manual_seed(0)
    target = Transformer(TransformerConfig(**TINY)).eval()
    settings = dict(
        heads=2, prompts=2, prompt_len=8, new=6, gen_batch=2, steps=3, batch_size=2, window=6,
        lr=1e-3,
    )  # fmt: skip
    text = bytes(range(32, 127)) * 4
    heads, meta = bench.big_medusa_heads(target, settings, text, tmp_path, "target-a")
    assert meta["loss_first10"] > 0 and "cached state" not in capsys.readouterr().out
    again, _ = bench.big_medusa_heads(target, settings, text, tmp_path, "target-a")
    assert "cached state (validated)" in capsys.readouterr().out
    for a, b in zip(heads.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # another target's checksum: another cache entry (trained anew, not loaded)
    bench.big_medusa_heads(target, settings, text, tmp_path, "target-b")
    assert "cached state" not in capsys.readouterr().out
    # a stored checksum that is not the saved heads': not reused
    (meta_path,) = [p for p in tmp_path.glob("big-medusa-*.json") if "target-a" in p.read_text()]
    stored = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**stored, "sha256": "0" * 64}))
    bench.big_medusa_heads(target, settings, text, tmp_path, "target-a")
    assert "does not validate: retraining" in capsys.readouterr().out
