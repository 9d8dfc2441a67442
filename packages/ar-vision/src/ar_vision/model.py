"""The class-conditional image step model: one model for pixels, VQ tokens and scales.

Xiong et al., "Autoregressive Models in Vision: A Survey" (2024, arXiv:2411.05902)
sort image AR models into pixel-, token- and scale-based ones. Here all three are one
model under different :class:`~ar_core.Plan`s: what changes is the vocabulary (pixel
levels, VQ codes, multi-scale codes) and the ordering (raster, next-scale, ...).

The model composes ar-core's :class:`~ar_core.steps.TwoStreamStepModel` (XLNet's two
streams, Yang et al. 2019, arXiv:1906.08237) with the class token as its *condition*:
the class joins ``[BOS]`` in step 0 at object position 0 and the image tokens follow at
positions ``1..N``, in training and in sampling alike, so the first sampling call
commits ``[BOS, class]`` together with the queries of the first image step: a plan of K
steps costs exactly K network calls. Classifier-free guidance (Ho & Salimans,
"Classifier-Free Diffusion Guidance", 2022, arXiv:2207.12598) needs an unconditional
model too: label ``num_classes`` is the *null class*, used for a fraction of the
training rows (label dropout, :func:`drop_labels`). Sampling is ar-core's step loop
(:func:`ar_vision.sampling.generate_images`).

Vocabulary of the wrapped two-stream model: ``[0, V)`` image tokens, ``V + c`` the
class ``c`` (``c = num_classes``: null), then ar-core's ``[BOS]`` and ``[QUERY]``.

Notation: B rows, N image tokens, V image vocabulary, C classes, m tokens of one step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ar_core.atomic import resolve_folder, write_folder
from ar_core.errors import CheckpointError, ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig
from ar_core.steps import TwoStreamStepModel, query_stream_loss

VISION_FILE = "vision.json"

# name -> (dim, n_layers, n_heads); small enough to train on 2 CPU cores in a minute
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "small": (96, 3, 4),
    "base": (128, 4, 4),
}


class ClassConditionalStepModel(nn.Module):
    """A two-stream step model whose first content token is the class label.

    ``step_model.vocab_size`` must be ``vocab_size + num_classes + 1`` (the classes and
    the null class). Build one with :func:`build_step_model`.
    """

    def __init__(
        self,
        step_model: TwoStreamStepModel,
        vocab_size: int,
        num_classes: int,
        num_positions: int | None = None,
        own_step_queries: bool = False,
    ) -> None:
        super().__init__()
        # queries see the other queries of their step (CTF's bidirectional fine stage,
        # ar_vision.bidirectional); False: each query sees only itself
        self.own_step_queries = own_step_queries
        if step_model.vocab_size != vocab_size + num_classes + 1:
            raise ConfigError(
                f"the step model has {step_model.vocab_size} data ids but {vocab_size} image "
                f"tokens + {num_classes} classes + the null class need "
                f"{vocab_size + num_classes + 1}; build it with build_step_model"
            )
        self.step_model = step_model
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.null_class = num_classes
        room = step_model.max_positions - 1  # position 0 is the class
        if num_positions is not None and not 1 <= num_positions <= room:
            raise ConfigError(
                f"num_positions={num_positions} does not fit the step model (1..{room})"
            )
        # the image tokens it was built for (the rest of max_seq_len is room for the
        # speculative windows of ar_vision.lm_adapter); old checkpoints: all the room
        self.max_tokens = room if num_positions is None else num_positions

    @property
    def device(self) -> torch.device:
        return self.step_model.transformer.device

    def class_tokens(self, labels: Tensor) -> Tensor:
        """Labels (B,) in ``[0, C]`` (``C`` = null) -> class token ids (B,)."""
        if labels.ndim != 1:
            raise InputError(f"labels must be (B,), got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise InputError(
                f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = the null "
                f"class), got {int(labels.min())}..{int(labels.max())}"
            )
        return labels.to(device=self.device, dtype=torch.long) + self.vocab_size

    def check_tokens(self, n: int) -> None:
        if n > self.max_tokens:
            raise InputError(
                f"{n} image tokens do not fit a model built for {self.max_tokens}; build it "
                f"with build_step_model(num_positions={n}, ...)"
            )

    # -- training: the whole plan in one call ------------------------------------------
    def forward(self, tokens: Tensor, labels: Tensor, order: Tensor, slot_steps: Tensor) -> Tensor:
        """Logits (B, N, V) in slot order: slot ``t`` predicts the token at position
        ``order[t]`` from the class and the tokens of steps < ``slot_steps[t]``.

        ``tokens`` (B, N) in ``[0, V)``; ``labels`` (B,); ``order`` (N,) or (B, N) and
        ``slot_steps`` (N,) from ``ar_core.steps.plan_slots(plan)``. The class token is
        the two-stream model's ``condition``: it joins ``[BOS]`` in step 0, as in sampling.
        """
        B, N = tokens.shape
        self.check_tokens(N)
        device = tokens.device
        order = order.to(device).expand(B, N)
        condition = self.class_tokens(labels)[:, None]  # (B, 1)
        if self.own_step_queries:
            from ar_vision.bidirectional import query_logits

            out = query_logits(self.step_model, tokens, order, slot_steps.to(device), condition)
            return out.logits[..., : self.vocab_size]
        logits = self.step_model(tokens, order, slot_steps.to(device), condition)  # (B, N, V+C+1)
        return logits[..., : self.vocab_size]  # (B, N, V)

    def loss(self, tokens: Tensor, labels: Tensor, order: Tensor, slot_steps: Tensor) -> Tensor:
        """Mean cross-entropy (nats per token) of the image tokens."""
        B, N = tokens.shape
        order = order.to(tokens.device).expand(B, N)
        return query_stream_loss(self(tokens, labels, order, slot_steps), tokens, order)

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """The two-stream model's files plus ``vision.json`` (vocabulary and classes)."""
        meta = {
            "vocab_size": self.vocab_size,
            "num_classes": self.num_classes,
            "num_positions": self.max_tokens,
            "own_step_queries": self.own_step_queries,
        }

        def write(folder: Path) -> None:  # every file, then one rename (ar_core.atomic)
            self.step_model.write_files(folder)
            (folder / VISION_FILE).write_text(json.dumps(meta))

        return write_folder(path, write)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: torch.device | str | None = None
    ) -> ClassConditionalStepModel:
        path = resolve_folder(path, what="model")
        file = path / VISION_FILE
        if not file.is_file():
            raise CheckpointError(
                f"{file} is missing: {path} was not written by "
                f"ClassConditionalStepModel.save_pretrained"
            )
        try:
            meta = json.loads(file.read_text())
            vocab_size, num_classes = int(meta["vocab_size"]), int(meta["num_classes"])
            n = meta.get("num_positions")  # absent in checkpoints before the SJD room
            num_positions = None if n is None else int(n)
            own_step = bool(meta.get("own_step_queries", False))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{file} is corrupted ({exc}); save the model again") from None
        step_model = TwoStreamStepModel.from_pretrained(path, device=device)
        return cls(step_model, vocab_size, num_classes, num_positions, own_step)


def drop_labels(labels: Tensor, null_class: int, p: float, generator: torch.Generator) -> Tensor:
    """Replace each label by ``null_class`` with probability ``p`` (CFG's label dropout)."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"label dropout must be in [0, 1), got {p}")
    drop = torch.rand(labels.shape, generator=generator) < p  # (B,)
    return torch.where(drop, null_class, labels)


def build_step_model(
    *,
    vocab_size: int,
    num_classes: int,
    num_positions: int,
    size: str = "tiny",
    seed: int = 0,
    window: int | None = None,
    own_step_queries: bool = False,
) -> ClassConditionalStepModel:
    """A fresh model for ``num_positions`` image tokens over ``vocab_size`` ids; ``size``
    names a preset of :data:`PRESETS`; ``seed`` fixes the initialisation.

    ``max_seq_len`` is sized from the image, not a constant: both streams over
    ``[BOS, class, image]`` in training (``2 (N + 2)``), or more: room for a speculative
    window of up to ``window`` drafts (default N, the whole image; ``N + 2 window + 3``)
    when the model runs as a causal LM (:class:`ar_vision.lm_adapter.CausalLMAdapter`: SJD, LANTERN). The
    extra room only lengthens the position table; the rows a plan uses, and every other
    weight, are drawn exactly as without it (the table is drawn last, element-wise).
    ``own_step_queries``: the queries of a step see each other (CTF's bidirectional fine
    stage; :mod:`ar_vision.bidirectional`)."""
    if size not in PRESETS:
        raise ConfigError(f"unknown model size {size!r}; choose one of {sorted(PRESETS)}")
    window = num_positions if window is None else window
    if window < 0:
        raise ConfigError(f"window must be >= 0; got {window}")
    dim, n_layers, n_heads = PRESETS[size]
    cfg = TransformerConfig(
        vocab_size=vocab_size + num_classes + 1 + 2,  # + null class, [BOS], [QUERY]
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        # training: both streams over BOS, class and the image, 2 (N + 2); a causal-LM
        # call of a window of w drafts: BOS + N committed + (w + 1) tokens + (w + 1) queries
        max_seq_len=max(2 * (num_positions + 2), num_positions + 2 * window + 3),
        ffn_hidden=4 * dim,  # Llama's rounding to 256 would triple a tiny model's MLP
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = Transformer(cfg)
        after_transformer = torch.get_rng_state()
        step_model = TwoStreamStepModel(transformer, vocab_size + num_classes + 1)
        # the position rows of a model without the window's room, drawn as it draws them
        # (so a window changes no number of training or plain sampling)
        torch.set_rng_state(after_transformer)
        rows = num_positions + 2  # max_positions + 1 of max_seq_len 2 (N + 2)
        table = nn.Embedding(rows, dim)  # its own init draws, then TwoStreamStepModel's
        nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            step_model.pos_embed.weight[:rows] = table.weight
    return ClassConditionalStepModel(
        step_model, vocab_size, num_classes, num_positions, own_step_queries
    )
