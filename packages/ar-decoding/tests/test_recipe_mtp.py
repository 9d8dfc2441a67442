"""Recipe ``decoding-mtp`` end to end on a tiny stand-in for a text-code run (an untrained
2-layer byte model, a 20 kB corpus, a few MTP steps on 3 self-distilled continuations):
registered, not in the demo; the base's logits are bit-identical after training; every
row's output equals greedy; the table has greedy, compiled greedy and k = 4 / 8, linear and
quadratic; ``sample`` reloads ``mtp.pt``; a
folder without a run is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ar_core import registry
from ar_core.errors import ConfigError
from ar_core.model import Transformer, TransformerConfig
from ar_core.recipes import write_recipe_file

pytest.importorskip("ar_text")


def _fake_text_code_run(folder: Path) -> None:
    from ar_text.tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer()
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, max_seq_len=256
    )
    Transformer(cfg).save_pretrained(folder / "model")
    tokenizer.save(folder / "tokenizer")
    code = registry.recipes.get("text-code")
    config = code.config_class(max_bytes=20_000, seq_len=256, steps=1, dim=32, n_layers=2)
    write_recipe_file(folder, "text-code", config)


def test_decoding_mtp_recipe(tmp_path: Path) -> None:
    recipe = registry.recipes.get("decoding-mtp")
    assert recipe.in_demo is False
    base = tmp_path / "base"
    _fake_text_code_run(base)
    config = recipe.config_class(
        base=str(base), steps=4, batch_size=2, seq_len=32, anchors=2, prompts=1,
        prompt_tokens=16, new_tokens=12, repeats=1, distill_sequences=3, distill_prompt_tokens=8,
    )  # fmt: skip
    result = recipe.run(config, tmp_path / "run", lambda msg: None)
    assert result.metrics["base_logits_bit_identical"] == 1.0
    labels = [row[0] for row in result.tables[0].rows]
    assert labels == [
        "greedy", "greedy compiled", "mtp k=4 linear", "mtp k=4 quadratic", "mtp k=8 linear", "mtp k=8 quadratic",
    ]  # fmt: skip
    assert all(row[-1] == "yes" for row in result.tables[0].rows)
    assert (tmp_path / "run" / "mtp.pt").is_file()
    write_recipe_file(tmp_path / "run", "decoding-mtp", config)  # what `ar train` writes
    samples = recipe.sample(tmp_path / "run", 1, lambda msg: None)
    assert len(samples.samples) == 1
    with pytest.raises(ConfigError, match="must be below seq_len"):
        recipe.run(config.model_copy(update={"distill_prompt_tokens": 32}), tmp_path / "y", print)
    with pytest.raises(ConfigError, match="holds no text-code run"):
        recipe.run(config.model_copy(update={"base": str(tmp_path)}), tmp_path / "x", print)
