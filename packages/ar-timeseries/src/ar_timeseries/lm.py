"""The frozen language-model backbone of AutoTimes and Time-LLM.

:class:`FrozenLM` wraps a causal LM and exposes what both methods need: the word
embeddings (V, C), ``embed(ids)`` and ``hidden(embeds)`` (the final-norm hidden states
of a sequence of input embeddings). Its parameters have ``requires_grad=False`` and it
stays in eval mode whatever ``train()`` is called on the model around it. Two kinds of
LM fit:

* an ar :class:`~ar_core.model.Transformer` (``query_embeds`` feeds embeddings);
* any Hugging Face causal LM through ar-text's ``from_hf`` adapter (``inputs_embeds``),
  built from a config or loaded from a local folder - nothing is downloaded here.

Text goes in as UTF-8 bytes (ar-text's byte tokenizer); for an HF model the byte values
are used as its first 256 token ids (GPT-2-style byte-level vocabularies start with the
bytes; other vocabularies get arbitrary but fixed tokens).

:func:`text_lm` trains a tiny byte-level ar Transformer on the Python standard library's
sources (text that is on every machine), caching it under ``$AR_CACHE_DIR/timeseries``
(default ``~/.cache/ar/timeseries``) by a hash of its settings; :func:`random_lm` is the
same architecture untrained, the ablation.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError
from ar_core.model import Transformer, TransformerConfig


def cache_dir() -> Path:
    root = Path(os.environ.get("AR_CACHE_DIR", Path.home() / ".cache" / "ar"))
    return root.expanduser() / "timeseries"


class FrozenLM(nn.Module):
    """A causal LM with every parameter frozen (see the module docstring)."""

    def __init__(self, lm: nn.Module, name: str = "lm") -> None:
        super().__init__()
        self.lm = lm
        self.name = name
        self.lm.requires_grad_(False)
        self.lm.eval()
        self.is_ar = isinstance(lm, Transformer)
        m: Any = lm
        self.max_len = int(m.max_seq_len if self.is_ar else getattr(m, "max_seq_len", 1 << 16))
        table = self.word_embeddings
        self.vocab_size, self.dim = int(table.shape[0]), int(table.shape[1])

    def train(self, mode: bool = True) -> FrozenLM:
        super().train(mode)
        self.lm.eval()  # frozen: no dropout, whatever the wrapper's mode
        return self

    @property
    def word_embeddings(self) -> Tensor:
        m: Any = self.lm
        if self.is_ar:
            return m.tok_embeddings.weight  # type: ignore[no-any-return]
        return getattr(m, "hf", m).get_input_embeddings().weight  # type: ignore[no-any-return]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, C) input embeddings."""
        return nn.functional.embedding(ids, self.word_embeddings)

    def hidden(self, embeds: Tensor) -> Tensor:
        """(B, T, C) input embeddings -> (B, T, C) final-norm hidden states (causal)."""
        if embeds.shape[1] > self.max_len:
            raise ConfigError(
                f"the LM sees at most {self.max_len} positions, this input has "
                f"{embeds.shape[1]}; use fewer segments/patches or a shorter prompt"
            )
        m: Any = self.lm
        if self.is_ar:
            dummy = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            return m(dummy, query_embeds=embeds).hidden  # type: ignore[no-any-return]
        hf = getattr(m, "hf", m)
        out = hf(inputs_embeds=embeds, output_hidden_states=True)
        return out.hidden_states[-1]  # type: ignore[no-any-return]

    @torch.no_grad()
    def text_features(self, texts: list[str], batch_size: int = 256) -> Tensor:
        """The last position's hidden state of each text (B, C): texts of one length class
        are batched by right-aligning them after spaces (the LM is causal)."""
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = [self.encode(t) for t in texts[i : i + batch_size]]
            n = max(len(c) for c in chunk)
            ids = torch.tensor([[32] * (n - len(c)) + c for c in chunk], dtype=torch.long)
            out.append(self.hidden(self.embed(ids.to(self.word_embeddings.device)))[:, -1])
        return torch.cat(out)


LM_DEFAULTS: dict[str, Any] = dict(dim=128, n_layers=2, n_heads=4, steps=400, seq_len=128)


def lm_config(dim: int, n_layers: int, n_heads: int) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=256, dim=dim, n_layers=n_layers, n_heads=n_heads, max_seq_len=512
    )


def random_lm(dim: int = 128, n_layers: int = 2, n_heads: int = 4, seed: int = 0) -> FrozenLM:
    """The architecture of :func:`text_lm`, randomly initialised (the ablation)."""
    torch.manual_seed(seed)
    return FrozenLM(Transformer(lm_config(dim, n_layers, n_heads)), name="random-init LM")


def text_lm(
    dim: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    steps: int = 400,
    seq_len: int = 128,
    batch_size: int = 16,
    max_bytes: int = 600_000,
    seed: int = 0,
    use_cache: bool = True,
    progress: bool = False,
) -> tuple[FrozenLM, dict[str, float]]:
    """A byte-level LM trained on the standard library (cached); (LM, info) where info
    holds the held-out bits per byte, the training seconds and whether it was cached."""
    from ar_core.trainer import TrainConfig, Trainer
    from ar_text.data import PackedBatches, pack, packed_nll, stdlib_corpus

    settings = dict(
        dim=dim, n_layers=n_layers, n_heads=n_heads, steps=steps, seq_len=seq_len,
        batch_size=batch_size, max_bytes=max_bytes, seed=seed, version=1,
    )  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / f"text-lm-{key}"
    if use_cache and (folder / "info.json").is_file():
        lm = Transformer.from_pretrained(folder / "model")
        info = json.loads((folder / "info.json").read_text())
        return FrozenLM(lm, name="stdlib byte LM"), {**info, "cached": 1.0}
    corpus = stdlib_corpus(max_bytes, held_out_fraction=0.05)
    train = pack([list(d.encode("utf-8")) for d in corpus.train], seq_len)
    held = pack([list(d.encode("utf-8")) for d in corpus.held_out], seq_len)
    torch.manual_seed(seed)
    model = Transformer(lm_config(dim, n_layers, n_heads))
    config = TrainConfig.build(
        steps=steps, batch_size=batch_size, lr=3e-3, weight_decay=0.0,
        warmup_steps=max(1, steps // 20), seed=seed, progress=progress, log_every=max(1, steps // 10),
    )  # fmt: skip
    start = time.perf_counter()
    Trainer(model, _lm_loss, PackedBatches(train), config).train()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        rows = held.tokens[:64], held.doc_ids[:64], held.positions[:64]
        total, count = packed_nll(model, rows)
    bits = float(total / count.clamp(min=1)) / float(torch.log(torch.tensor(2.0)))
    info = {"held_out_bits_per_byte": bits, "train_seconds": seconds}
    if use_cache:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder / "model")
        (folder / "info.json").write_text(json.dumps(info))
    return FrozenLM(model, name="stdlib byte LM"), {**info, "cached": 0.0}


def _lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    from ar_text.data import packed_lm_loss

    return packed_lm_loss(model, batch)


def hf_lm(model: Any) -> FrozenLM:
    """Wrap a ``transformers`` causal LM (an object, or ar-text's ``from_hf`` adapter)."""
    return FrozenLM(model, name=type(getattr(model, "hf", model)).__name__)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
