"""AR-guided diffusion: the output is the guide's greedy decoding, batched and ragged,
cached and not; where the diffusion proposals agree with the guide it makes fewer guide
calls than tokens."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

import ar_core as ar
from ar_core.errors import ConfigError, InputError
from ar_core.model import Transformer, TransformerConfig


def guide_model(vocab: int = 11, seed: int = 3, max_seq_len: int = 64) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len
    )
    return Transformer(cfg).eval()


def token_map(model: Transformer, table: dict[int, int]) -> Transformer:
    """Make ``model`` ignore its context: attention and MLP outputs zeroed, so the logits
    at a position depend only on its own token; token x then predicts ``table[x]``."""
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.wo.weight.zero_()
            layer.ffn.w2.weight.zero_()
        model.tok_embeddings.weight.zero_()
        model.output.weight.zero_()
        for x, y in table.items():
            model.tok_embeddings.weight[x, x] = 1.0
            model.output.weight[y, x] = 10.0
    return model


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("lengths", [None, [6, 3, 5]])
def test_output_is_the_guides_greedy_decoding(use_cache: bool, lengths: list | None) -> None:
    diffusion = tiny_model(11, seed=6, sharp=5.0)
    guide = guide_model()
    prompt = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(7))
    cfg = ar.GenerationConfig(max_new_tokens=12)
    ref = ar.generate(guide, prompt, cfg, strategy="greedy", prompt_lengths=lengths)
    res = ar.generate(
        diffusion,
        prompt,
        cfg,
        strategy="ar-guided-diffusion",
        guide=guide,
        block_size=4,
        use_cache=use_cache,
        prompt_lengths=lengths,
    )
    assert torch.equal(res.sequences, ref.sequences)
    checks = res.stats.draft_forward_passes - use_cache  # minus the guide's prefill
    assert res.stats.target_forward_passes == checks  # one proposal per check
    assert sum(res.stats.accepted_lengths) == 3 * 12


def test_agreeing_proposals_need_fewer_guide_calls_than_tokens() -> None:
    """The guide maps token x to x + 1 up to 5, and 5 to itself; the diffusion model
    proposes 5 at every masked position. From a prompt ending in 0 the guide decodes
    1 2 3 4 5 5 5 ...: the first block takes a check per token (the guide corrects each
    proposal), the later blocks agree at once."""
    guide = token_map(guide_model(), {x: min(x + 1, 5) for x in range(11)})
    diffusion = token_map(tiny_model(11), {11: 5})  # [MASK] (id 11) -> 5
    prompt = torch.tensor([[7, 8, 0]])
    cfg = ar.GenerationConfig(max_new_tokens=12)
    ref = ar.generate(guide, prompt, cfg, strategy="greedy")
    assert ref.sequences[0, 3:].tolist() == [1, 2, 3, 4] + [5] * 8
    res = ar.generate(
        diffusion, prompt, cfg, strategy="ar-guided-diffusion", guide=guide, block_size=4
    )
    assert torch.equal(res.sequences, ref.sequences)
    assert res.stats.accepted_lengths == [1, 1, 1, 1, 4, 4]
    assert res.stats.draft_forward_passes == 1 + 6 < 12  # prefill + checks < tokens
    assert res.stats.target_forward_passes == 6


def test_ar_guided_bad_input() -> None:
    diffusion = tiny_model(11)
    prompt = torch.randint(0, 11, (2, 4))
    cfg = ar.GenerationConfig(max_new_tokens=12)
    ag = "ar-guided-diffusion"
    with pytest.raises(ConfigError, match="pass guide="):
        ar.generate(diffusion, prompt, cfg, strategy=ag)
    with pytest.raises(ConfigError, match="vocab_size=7\\) does not cover .* 0..10"):
        ar.generate(diffusion, prompt, cfg, strategy=ag, guide=guide_model(7))
    with pytest.raises(ConfigError, match="block_size=5 does not divide the length 12"):
        ar.generate(diffusion, prompt, cfg, strategy=ag, guide=guide_model(), block_size=5)
    with pytest.raises(InputError, match="need 19 positions but the guide's max_seq_len is 16"):
        ar.generate(diffusion, prompt, cfg, strategy=ag, guide=guide_model(max_seq_len=16))
