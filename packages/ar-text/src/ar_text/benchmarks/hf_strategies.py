"""ar's decoding strategies on a Hugging Face model (through ``ar_text.from_hf``) against
Hugging Face's own ``generate`` on the same weights.

Target: a random-weight HF causal LM of ``--family`` (4 layers x 256, vocabulary 1024):
``llama`` (RoPE, the default), ``bloom`` (ALiBi) or ``mistral`` (RoPE, every layer a
sliding window of 32, shorter than the prompt). Draft: the same family with 1 layer that
shares the target's embeddings, first block, final norm and LM head (a layer-skip draft:
random weights give a random draft nothing to agree on, a truncated target agrees
sometimes). The prompt is a random 16-token phrase repeated, so prompt
lookup has something to find (and greedy decoding of random weights soon loops too).

Rows (batch 1, CPU, one thread): ar ``greedy``, ``speculative`` (k=4, the draft above),
``prompt-lookup`` (10 draft tokens); HF greedy, assisted generation (the same draft,
4 assistant tokens, constant schedule) and ``prompt_lookup_num_tokens=10``. Each reports
tokens/s (best of ``--repeats`` after one warm-up), target forward passes (for HF, calls
of the target's ``forward``), mean accepted length where ar counts it, and whether the
tokens equal HF greedy's.

    uv run ar bench hf_strategies -- [--quick] [--family llama|bloom|mistral] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from ar_core.generation import GenerationConfig, generate
from ar_text import from_hf

VOCAB = 1024
TARGET = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8)


FAMILIES: dict[str, tuple[type[Any], type[Any], dict[str, Any]]] = {
    "llama": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(num_key_value_heads=4, max_position_embeddings=1024),
    ),
    "bloom": (transformers.BloomConfig, transformers.BloomForCausalLM, {}),
    "mistral": (
        transformers.MistralConfig,
        transformers.MistralForCausalLM,
        dict(num_key_value_heads=4, max_position_embeddings=1024, sliding_window=32),
    ),
}


def build_models(seed: int, family: str = "llama") -> tuple[Any, Any]:
    """(target, draft) HF models of ``family``; the draft is the target's first block with
    its embeddings, final norm and head (every draft parameter is copied from the target
    parameter of the same name)."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    common: dict[str, Any] = dict(vocab_size=VOCAB, **TARGET, **extra)
    target = model_cls(config_cls(**common)).eval()
    draft = model_cls(config_cls(**{**common, "num_hidden_layers": 1})).eval()
    own = target.state_dict()
    draft.load_state_dict({k: own[k] for k in draft.state_dict()})
    for m in (target, draft):
        m.generation_config.eos_token_id = None  # random weights: never stop early
        m.generation_config.pad_token_id = 0
    draft.generation_config.num_assistant_tokens = 4
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0
    return target, draft


def timed(fn: Callable[[], tuple[torch.Tensor, dict[str, Any]]], repeats: int) -> dict[str, Any]:
    """Best wall time of ``repeats`` runs after one warm-up; the last run's tokens/extras."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tokens, extra = fn()
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "tokens": tokens, **extra}


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens, 1 repeat")
    parser.add_argument("--out", default=".bench/hf_strategies.json")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="llama")
    args = parser.parse_args(argv)
    n = args.new_tokens or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps timings steady

    target, draft = build_models(args.seed, args.family)
    ar_target, ar_draft = from_hf(target), from_hf(draft)
    phrase = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(args.seed))
    ids = phrase.repeat(4)[None]  # (1, 64)
    mask = torch.ones_like(ids)
    greedy_cfg = GenerationConfig(max_new_tokens=n)

    def ar_run(strategy: str, **kw: Any) -> Callable[[], tuple[torch.Tensor, dict[str, Any]]]:
        def run() -> tuple[torch.Tensor, dict[str, Any]]:
            out = generate(ar_target, ids, greedy_cfg, strategy=strategy, **kw)
            return out.sequences, {
                "target_forward_passes": out.stats.target_forward_passes,
                "mean_accepted_length": round(out.stats.mean_accepted_length, 3),
            }

        return run

    # HF's generate calls target.forward once per target pass (ar's adapter calls it too,
    # but its rows count their passes in GenerationStats; the counter is reset per HF run)
    hf_calls = {"n": 0}
    hf_forward = target.forward

    def counted_forward(*args: Any, **kwargs: Any) -> Any:
        hf_calls["n"] += 1
        return hf_forward(*args, **kwargs)

    target.forward = counted_forward

    def hf_run(**kw: Any) -> Callable[[], tuple[torch.Tensor, dict[str, Any]]]:
        def run() -> tuple[torch.Tensor, dict[str, Any]]:
            hf_calls["n"] = 0
            with torch.no_grad():
                seq = target.generate(
                    ids, attention_mask=mask, do_sample=False, max_new_tokens=n, **kw
                )
            return seq, {"target_forward_passes": hf_calls["n"]}

        return run

    runs = {
        "ar greedy": ar_run("greedy"),
        "ar speculative (k=4)": ar_run(
            "speculative", draft_model=ar_draft, num_draft_tokens=4, do_sample=False
        ),
        "ar prompt-lookup (10)": ar_run("prompt-lookup", num_draft_tokens=10, do_sample=False),
        "hf greedy": hf_run(),
        "hf assisted (4)": hf_run(assistant_model=draft),
        "hf prompt_lookup (10)": hf_run(prompt_lookup_num_tokens=10),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, fn in runs.items():
        results[name] = timed(fn, repeats)
    reference = results["hf greedy"]["tokens"]
    print(f"{'run':24s} {'tok/s':>8s} {'fwd':>5s} {'acc len':>8s} {'= HF greedy':>12s}")
    for name, r in results.items():
        tokens = r.pop("tokens")
        r["tokens_per_s"] = round(n / r["seconds"], 1)
        r["equals_hf_greedy"] = bool(torch.equal(tokens, reference))
        print(
            f"{name:24s} {r['tokens_per_s']:8.1f} {r.get('target_forward_passes', '-')!s:>5s} "
            f"{r.get('mean_accepted_length', '-')!s:>8s} {r['equals_hf_greedy']!s:>12s}"
        )
    report = {
        "settings": {
            "new_tokens": n,
            "repeats": repeats,
            "prompt_tokens": ids.shape[1],
            "family": args.family,
            "target": {"vocab_size": VOCAB, **TARGET, **FAMILIES[args.family][2]},
            "draft_layers": 1,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
