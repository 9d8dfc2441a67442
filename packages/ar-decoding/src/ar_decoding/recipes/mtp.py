"""Recipe ``decoding-mtp``: multi-token prediction fine-tuned onto a trained code model.

    base (a ``text-code`` run; trained here at ar-text's demo size when none is given)
    -> MTPModel(base, k) with gated LoRA, mask tokens and a sampler head
    -> self-distillation: the base's greedy continuations of prompts from its training
       text (``distill_sequences``; 0: the training text itself)
    -> train_mtp on them (mask CE + sampler CE + consistency)
    -> check: the base's logits are bit-identical to before training
    -> greedy (as ``ar.generate`` runs it, and compiled) vs mtp (k = 4, 8; linear and
       quadratic) on held-out code prompts

Greedy MTP must predict the base's own greedy choices, so training on the base's greedy
text (not on the corpus, whose next token the base often gets wrong) is what raises the
accepted length; decoding stays lossless either way.

Reported: accepted tokens per target forward (``GenerationStats.mean_accepted_length``),
target forwards per new token, whether each output equals the base's greedy output, and
wall-clock and CPU seconds against greedy and compiled greedy measured in the same process
(interleaved repeats per prompt, medians; one torch thread by default). Samragh et al.
report ~5x on code for large pretrained models on accelerators; this recipe reports ours
on a small CPU-trained model.

The base, its tokenizer and corpus come from ar-text (``ar_text``); the recipe refuses to
run without it. ``run`` writes ``mtp.pt`` (the trained mask embeddings, sampler and
adapters: ``MTPModel.state_dict()`` without the base's own weights) and ``base/`` when it
trained the base; ``sample`` decodes held-out prompts with it.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import pydantic
import torch

from ar_core.errors import ConfigError
from ar_core.generation import GenerationConfig, generate
from ar_core.model import Transformer
from ar_core.recipes import Progress, RecipeResult, Table, read_recipe_file, write_recipe_file
from ar_core.recipes.base import RecipeBase
from ar_decoding.mtp import MTPModel, train_mtp

BOS = "<|bos|>"


class DecodingMTPConfig(pydantic.BaseModel):
    """Settings of ``decoding-mtp``; the defaults fine-tune in minutes on 2 CPU cores."""

    model_config = pydantic.ConfigDict(extra="forbid")

    base: str | None = None  # a text-code run folder (model/, tokenizer/); None: train one
    base_layers: int = pydantic.Field(2, ge=1)  # layers of the base trained when base is None
    masks: int = pydantic.Field(8, ge=1)  # k mask tokens (decoding uses k = 4 and this)
    rank: int = pydantic.Field(16, ge=1)  # LoRA rank
    steps: int = pydantic.Field(2000, ge=1)  # MTP training updates
    batch_size: int = pydantic.Field(8, ge=1)
    seq_len: int = pydantic.Field(64, ge=12)  # tokens per training window
    anchors: int = pydantic.Field(8, ge=1)  # mask blocks per window
    lr: float = pydantic.Field(2e-3, gt=0)
    consistency: float = pydantic.Field(1.0, ge=0)  # weight of the consistency loss
    # self-distillation: MTP trains on this many greedy continuations of the base (from
    # prompts of its training text), the text greedy MTP must predict; 0: the corpus itself
    distill_sequences: int = pydantic.Field(512, ge=0)
    distill_prompt_tokens: int = pydantic.Field(16, ge=1)
    prompts: int = pydantic.Field(6, ge=1)  # held-out prompts (batch 1 each)
    prompt_tokens: int = pydantic.Field(48, ge=1)
    new_tokens: int = pydantic.Field(64, ge=1)
    repeats: int = pydantic.Field(3, ge=1)  # timed repeats per prompt and strategy
    seed: int = 0
    threads: int = pydantic.Field(1, ge=0)  # timing on one thread: no OpenMP contention


def _ar_text() -> Any:
    try:
        import ar_text.data
        import ar_text.tokenizers
    except ImportError:
        raise ConfigError(
            "recipe 'decoding-mtp' fine-tunes a text-code model and needs ar-text: "
            "pip install ar-text"
        ) from None
    return ar_text


def _base_folder(config: DecodingMTPConfig, out_dir: Path, progress: Progress) -> Path:
    """The text-code run to fine-tune: ``config.base``, or ar-text's demo trained here."""
    from ar_core import registry

    if config.base is not None:
        folder = Path(config.base).expanduser()
        if not (folder / "model").is_dir() or not (folder / "tokenizer").is_dir():
            raise ConfigError(
                f"decoding-mtp: {folder} holds no text-code run (model/ and tokenizer/); "
                f"train one with `ar train text-code --demo` or leave base unset"
            )
        return folder
    folder = out_dir / "base"
    recipe = registry.recipes.get("text-code")
    # the demo's model at twice its context: a quadratic step with k = 8 writes 81 slots
    base_config = recipe.demo_config().model_copy(
        update={"seed": config.seed, "seq_len": 256, "n_layers": config.base_layers}
    )
    if (folder / "model").is_dir() and (folder / "tokenizer").is_dir():
        try:
            _, fields = read_recipe_file(folder)
        except ConfigError:  # unreadable: train again
            fields = None
        if fields == base_config.model_dump(mode="json"):
            progress(f"base: reusing {folder} (same text-code settings)")
            return folder
    progress(f"base: training text-code at its demo size, {config.base_layers} layers, context 256")
    recipe.run(base_config, folder, progress)
    write_recipe_file(folder, "text-code", base_config)
    return folder


def _load(folder: Path, progress: Progress) -> tuple[Transformer, Any, list[list[int]], list[str]]:
    """(base model, tokenizer, encoded training documents, held-out documents)."""
    from ar_core import registry

    ar_text = _ar_text()
    model = Transformer.from_pretrained(folder / "model").eval()
    tokenizer = ar_text.tokenizers.load_tokenizer(folder / "tokenizer")
    base_cfg = registry.recipes.get("text-code").read_config(folder)
    progress(f"reading the base's corpus ({base_cfg.max_bytes} bytes of the standard library)")
    corpus = ar_text.data.stdlib_corpus(base_cfg.max_bytes, base_cfg.held_out_fraction)
    bos = tokenizer.token_id(BOS)
    train = [[bos, *tokenizer.encode(d)] for d in corpus.train]
    return model, tokenizer, train, list(corpus.held_out)


def _windows(docs: list[list[int]], seq_len: int) -> Any:
    """``sample(generator, batch) -> (batch, seq_len)`` windows of the concatenated text."""
    stream = torch.tensor([t for d in docs for t in d], dtype=torch.long)
    if stream.numel() <= seq_len + 1:
        raise ConfigError(f"decoding-mtp: {stream.numel()} training tokens < seq_len {seq_len}")

    def sample(gen: torch.Generator, batch_size: int) -> torch.Tensor:
        start = torch.randint(0, stream.numel() - seq_len, (batch_size,), generator=gen)
        return torch.stack([stream[s : s + seq_len] for s in start.tolist()])

    return sample


def _distilled(
    base: Transformer, corpus: Any, config: DecodingMTPConfig, progress: Progress
) -> Any:
    """``sample(generator, batch) -> (batch, seq_len)`` windows of the base's own greedy
    continuations: ``distill_sequences`` prompts of ``distill_prompt_tokens`` tokens drawn
    from the training text (seeded), each continued by ``2 seq_len`` greedy tokens."""
    gen = torch.Generator().manual_seed(config.seed + 2)
    length = 2 * config.seq_len
    if config.distill_prompt_tokens >= config.seq_len:
        raise ConfigError(
            f"decoding-mtp: distill_prompt_tokens {config.distill_prompt_tokens} must be "
            f"below seq_len {config.seq_len} (prompts are cut from training windows)"
        )
    if config.distill_prompt_tokens + length > base.max_seq_len:
        raise ConfigError(
            f"decoding-mtp: distill_prompt_tokens {config.distill_prompt_tokens} + 2 x seq_len "
            f"{config.seq_len} exceed the base's context {base.max_seq_len}"
        )
    cfg = GenerationConfig(max_new_tokens=length, temperature=0)
    sequences = []
    for start in range(0, config.distill_sequences, 64):
        n = min(64, config.distill_sequences - start)
        prompts = corpus(gen, n)[:, : config.distill_prompt_tokens]
        out = generate(base, prompts, cfg, compile=False)
        sequences.append(out.sequences[:, config.distill_prompt_tokens :])
        progress(f"self-distillation: {start + n}/{config.distill_sequences} continuations")
    text = torch.cat(sequences)  # (N, 2 seq_len)

    def sample(g: torch.Generator, batch_size: int) -> torch.Tensor:
        rows = torch.randint(0, text.shape[0], (batch_size,), generator=g)
        offset = torch.randint(0, length - config.seq_len + 1, (batch_size,), generator=g)
        cols = offset[:, None] + torch.arange(config.seq_len)[None, :]
        return text[rows[:, None], cols]

    return sample


def _prompts(tokenizer: Any, held_out: list[str], n: int, length: int) -> list[torch.Tensor]:
    bos = tokenizer.token_id(BOS)
    out = []
    for doc in held_out:
        ids = tokenizer.encode(doc)
        if len(ids) >= length:
            out.append(torch.tensor([[bos, *ids[:length]]]))
        if len(out) == n:
            break
    return out


def _adapter_state(model: MTPModel) -> dict[str, torch.Tensor]:
    """The trained parts: mask embeddings, sampler, LoRA A/B (not the frozen base)."""
    return {
        k: v for k, v in model.state_dict().items() if not k.startswith("base.") or "lora_" in k
    }


class DecodingMTPRecipe(RecipeBase):
    name = "decoding-mtp"
    description = (
        "multi-token prediction (mask tokens + gated LoRA + sampler head) fine-tuned onto a "
        "text-code model; accepted tokens per step and speed vs greedy"
    )
    config_class = DecodingMTPConfig
    in_demo = False  # trains a base and fine-tunes it: several minutes

    def demo_config(self) -> DecodingMTPConfig:
        return DecodingMTPConfig(
            steps=150, distill_sequences=128, prompts=3, new_tokens=48, repeats=2
        )

    def _run(self, config: DecodingMTPConfig, out_dir: Path, progress: Progress) -> RecipeResult:
        _ar_text()
        out_dir.mkdir(parents=True, exist_ok=True)
        folder = _base_folder(config, out_dir, progress)
        base, tokenizer, train_docs, held_out = _load(folder, progress)
        if config.seq_len > base.max_seq_len:
            raise ConfigError(
                f"decoding-mtp: seq_len {config.seq_len} exceeds the base's context "
                f"{base.max_seq_len}"
            )
        room = base.max_seq_len - (config.prompt_tokens + 1 + config.new_tokens)
        if room < (config.masks + 1) ** 2:
            progress(
                f"note: the base's context {base.max_seq_len} leaves {room} slots after the "
                f"last token; quadratic k={config.masks} steps need {(config.masks + 1) ** 2}, "
                f"so mtp decodes one plain token where a step does not fit"
            )
        reference = copy.deepcopy(base)
        data = _windows(train_docs, config.seq_len)
        probe = data(torch.Generator().manual_seed(config.seed + 1), 4)
        with torch.no_grad():
            before = reference(probe).logits
        if config.distill_sequences:
            data = _distilled(reference, data, config, progress)

        torch.manual_seed(config.seed)
        model = MTPModel(base, config.masks, rank=config.rank)
        every = max(1, config.steps // 10)

        def report(step: int, losses: dict[str, float]) -> None:
            if step % every == 0 or step == config.steps - 1:
                parts = ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
                progress(f"mtp step {step + 1}/{config.steps}: {parts}")

        t0 = time.perf_counter()
        history = train_mtp(
            model,
            data,
            steps=config.steps,
            batch_size=config.batch_size,
            anchors=config.anchors,
            lr=config.lr,
            consistency=config.consistency,
            seed=config.seed,
            progress=report,
        )
        train_seconds = time.perf_counter() - t0
        torch.save(_adapter_state(model), out_dir / "mtp.pt")
        with torch.no_grad():
            bit_identical = bool(torch.equal(model(probe).logits, before))

        progress(f"decoding {config.prompts} held-out prompts, {config.repeats} repeats each")
        prompts = _prompts(tokenizer, held_out, config.prompts, config.prompt_tokens)
        rows, metrics, samples = self._compare(model, reference, tokenizer, prompts, config)
        metrics.update(
            base_logits_bit_identical=float(bit_identical),
            train_seconds=round(train_seconds, 1),
            mask_ce_first=round(sum(h["mask_ce"] for h in history[:10]) / min(10, len(history)), 3),
            mask_ce_last=round(sum(h["mask_ce"] for h in history[-10:]) / min(10, len(history)), 3),
        )
        curve = [(float(i), h["mask_ce"]) for i, h in enumerate(history)]
        text = (
            f"the base's greedy continuations of {config.distill_sequences} training prompts"
            if config.distill_sequences
            else "the base's training text"
        )
        table = Table(
            "greedy vs MTP on held-out code (batch 1)",
            [
                "strategy",
                "accepted tokens / forward",
                "target forwards / token",
                "wall s (median)",
                "CPU s (median)",
                "speed-up vs greedy (wall)",
                "speed-up vs greedy (CPU)",
                "speed-up vs compiled greedy (wall)",
                "output = greedy",
            ],
            rows,
            note=(
                f"base {folder}; {config.steps} MTP steps of {config.batch_size} x "
                f"{config.seq_len} tokens of {text} ({train_seconds:.0f} s), k={config.masks} masks, "
                f"LoRA rank {config.rank}; {len(prompts)} prompts of {config.prompt_tokens} "
                f"tokens, {config.new_tokens} new tokens; per prompt the strategies run "
                f"interleaved {config.repeats} times, torch threads {torch.get_num_threads()}; "
                f"base logits bit-identical after training: {bit_identical}"
            ),
        )
        return RecipeResult(
            title="decoding-mtp: multi-token prediction on a text-code model",
            summary=(
                f"gated LoRA + {config.masks} mask tokens fine-tuned for {config.steps} steps; "
                f"base logits bit-identical: {bit_identical}; best accepted tokens / forward "
                f"{max(metrics[k] for k in metrics if k.startswith('accepted')):.2f}"
            ),
            tables=[table],
            curves={"mask CE": curve},
            samples=samples,
            metrics=metrics,
        )

    def _compare(
        self,
        model: MTPModel,
        reference: Transformer,
        tokenizer: Any,
        prompts: list[torch.Tensor],
        config: DecodingMTPConfig,
    ) -> tuple[list[list[Any]], dict[str, float], list[str]]:
        gen = GenerationConfig(max_new_tokens=config.new_tokens, temperature=0)
        variants: dict[str, tuple[Any, str, dict[str, Any]]] = {
            "greedy": (reference, "greedy", {}),  # what ar.generate runs by default
            "greedy compiled": (reference, "greedy", {"compile": True}),
        }
        for k in sorted({min(4, config.masks), config.masks}):
            for quadratic in (False, True):
                label = f"mtp k={k} {'quadratic' if quadratic else 'linear'}"
                variants[label] = (model, "mtp", dict(num_draft_tokens=k, quadratic=quadratic))
        for net, strategy, kwargs in variants.values():  # warm-up: compilation, allocations
            generate(net, prompts[0], gen, strategy=strategy, **kwargs)
        wall: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        tokens = dict.fromkeys(variants, 0)
        forwards = dict.fromkeys(variants, 0)
        accepted: dict[str, list[int]] = {v: [] for v in variants}
        equal = dict.fromkeys(variants, True)
        samples: list[str] = []
        for x in prompts:
            outputs: dict[str, torch.Tensor] = {}
            for rep in range(config.repeats):
                for label, (net, strategy, kwargs) in variants.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    out = generate(net, x, gen, strategy=strategy, **kwargs)
                    wall[label].append(time.perf_counter() - w0)
                    cpu[label].append(time.process_time() - c0)
                    if rep == 0:
                        outputs[label] = out.sequences
                        tokens[label] += out.stats.tokens_generated
                        forwards[label] += out.stats.target_forward_passes
                        accepted[label] += list(out.stats.accepted_lengths)
            for label in variants:
                equal[label] &= bool(torch.equal(outputs[label], outputs["greedy"]))
            new = outputs["greedy"][0, x.shape[1] :].tolist()
            samples.append(f"{tokenizer.decode(x[0, 1:].tolist())}\u2502{tokenizer.decode(new)}")
        rows: list[list[Any]] = []
        metrics: dict[str, float] = {}
        g_wall, g_cpu = statistics.median(wall["greedy"]), statistics.median(cpu["greedy"])
        c_wall = statistics.median(wall["greedy compiled"])
        for label in variants:
            acc = sum(accepted[label]) / max(1, len(accepted[label])) if accepted[label] else 1.0
            w, c = statistics.median(wall[label]), statistics.median(cpu[label])
            rows.append(
                [
                    label,
                    round(acc, 2),
                    round(forwards[label] / max(1, tokens[label]), 3),
                    round(w, 3),
                    round(c, 3),
                    round(g_wall / w, 2),
                    round(g_cpu / c, 2),
                    round(c_wall / w, 2),
                    "yes" if equal[label] else "NO",
                ]
            )
            key = label.replace(" ", "_").replace("=", "")
            metrics[f"accepted_{key}"] = round(acc, 3)
            metrics[f"speedup_{key}"] = round(g_wall / w, 3)
            metrics[f"speedup_cpu_{key}"] = round(g_cpu / c, 3)
            metrics[f"speedup_vs_compiled_{key}"] = round(c_wall / w, 3)
            metrics[f"equal_{key}"] = float(equal[label])
        return rows, metrics, samples

    def sample(self, checkpoint_dir: Path, n: int, progress: Progress) -> RecipeResult:
        config: DecodingMTPConfig = self.read_config(checkpoint_dir)
        folder = Path(config.base) if config.base is not None else Path(checkpoint_dir) / "base"
        base, tokenizer, _, held_out = _load(folder, progress)
        model = MTPModel(base, config.masks, rank=config.rank)
        state = torch.load(Path(checkpoint_dir) / "mtp.pt")
        missing = model.load_state_dict(state, strict=False)
        if missing.unexpected_keys or any(
            "lora_" in k or not k.startswith("base.") for k in missing.missing_keys
        ):
            raise ConfigError(
                f"{checkpoint_dir}/mtp.pt does not fit MTPModel(k={config.masks}, "
                f"rank={config.rank}) on {folder}; re-run ar train decoding-mtp"
            )
        gen = GenerationConfig(max_new_tokens=config.new_tokens, temperature=0)
        texts = []
        for x in _prompts(tokenizer, held_out, n, config.prompt_tokens):
            out = generate(model.eval(), x, gen, strategy="mtp", quadratic=True)
            new = out.sequences[0, x.shape[1] :].tolist()
            texts.append(
                f"{tokenizer.decode(x[0, 1:].tolist())}\u2502{tokenizer.decode(new)} "
                f"[{out.stats.mean_accepted_length:.2f} tokens / forward]"
            )
        return RecipeResult(title="decoding-mtp samples (greedy, quadratic MTP)", samples=texts)


recipe = DecodingMTPRecipe()


def step_costs(
    sizes: list[tuple[int, int]],
    *,
    prepack: bool = True,
    new_tokens: int = 48,
    repeats: int = 5,
    vocab_size: int = 1024,
) -> list[dict[str, Any]]:
    """The accepted length MTP needs to break even, per base size ``(dim, layers)``: the
    thread time of one MTP step over the thread time of one greedy token (uncompiled, as
    ``ar.generate`` runs it, and compiled), medians of ``repeats`` interleaved runs of a
    batch-1 decode of ``new_tokens`` after a 48-token prompt. The bases have random weights
    (only the costs are meaningful: a step costs what it costs whatever is accepted);
    ``prepack``: ``ar_core.quant.prepack`` on both sides."""
    from ar_core.model import TransformerConfig
    from ar_core.quant import prepack as pack

    gen = GenerationConfig(max_new_tokens=new_tokens, temperature=0)
    out: list[dict[str, Any]] = []
    for dim, layers in sizes:
        torch.manual_seed(0)
        cfg = TransformerConfig(
            vocab_size=vocab_size, dim=dim, n_layers=layers, n_heads=max(4, dim // 64),
            max_seq_len=256,
        )  # fmt: skip
        base = Transformer(cfg).eval()
        reference = copy.deepcopy(base)
        model = MTPModel(base, 8, rank=16).eval()
        if prepack:
            pack(reference)
            pack(model.base)
        x = torch.randint(0, vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
        variants: dict[str, tuple[Any, str, dict[str, Any]]] = {
            "greedy": (reference, "greedy", {}),
            "greedy compiled": (reference, "greedy", {"compile": True}),
            "k=4 linear": (model, "mtp", {"num_draft_tokens": 4}),
            "k=4 quadratic": (model, "mtp", {"num_draft_tokens": 4, "quadratic": True}),
            "k=8 linear": (model, "mtp", {"num_draft_tokens": 8}),
        }
        times: dict[str, list[float]] = {v: [] for v in variants}
        forwards: dict[str, int] = {}
        for net, strategy, kwargs in variants.values():  # warm-up
            generate(net, x, gen, strategy=strategy, **kwargs)
        for _ in range(repeats):
            for label, (net, strategy, kwargs) in variants.items():
                t0 = time.thread_time()
                result = generate(net, x, gen, strategy=strategy, **kwargs)
                times[label].append(time.thread_time() - t0)
                forwards[label] = result.stats.target_forward_passes
        per = {v: 1000 * statistics.median(times[v]) / forwards[v] for v in variants}
        row: dict[str, Any] = {"dim": dim, "layers": layers, "ms": per}
        for v in list(variants)[2:]:
            row[f"needed vs greedy, {v}"] = per[v] / per["greedy"]
            row[f"needed vs compiled, {v}"] = per[v] / per["greedy compiled"]
        out.append(row)
    return out


if __name__ == "__main__":  # python -m ar_decoding.recipes.mtp 96x2 256x4 [--no-prepack]
    import sys

    torch.set_num_threads(1)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sizes = [(int(d), int(n)) for d, n in (a.split("x") for a in args or ["96x2"])]
    print(
        "| base (dim x layers) | greedy ms / token | compiled greedy ms / token | needed vs "
        "greedy (k=4 lin / k=4 quad / k=8 lin) | needed vs compiled greedy |\n|---|---|---|---|---|"
    )
    for r in step_costs(sizes, prepack="--no-prepack" not in sys.argv):
        kinds = ("k=4 linear", "k=4 quadratic", "k=8 linear")
        g = " / ".join(f"{r[f'needed vs greedy, {v}']:.2f}" for v in kinds)
        c = " / ".join(f"{r[f'needed vs compiled, {v}']:.2f}" for v in kinds)
        ms = r["ms"]
        print(
            f"| {r['dim']} x {r['layers']} | {ms['greedy']:.2f} | {ms['greedy compiled']:.2f} "
            f"| {g} | {c} |",
            flush=True,
        )
