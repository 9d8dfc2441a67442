"""ar_text.bio (CrossNovo-style de novo peptide sequencing): masses, spectra, gradient
blocking, beam search and metrics."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pyteomics")

from ar_text.bio import crossnovo as C

torch.set_num_threads(1)


def test_b_y_masses_equal_known_values() -> None:
    # hand-computed from the monoisotopic residue masses (P 97.05276, E 129.04259,
    # K 128.09496, G 57.02146), water 18.01056 and the proton 1.00728
    b = C.b_ions("PEPTIDE")
    y = C.y_ions("PEPTIDE")
    assert b[0] == pytest.approx(98.06004, abs=1e-4)  # b1 = P + H+
    assert b[1] == pytest.approx(227.10263, abs=1e-4)  # b2 = PE + H+
    assert y[0] == pytest.approx(148.06043, abs=1e-4)  # y1 = E + H2O + H+
    assert C.y_ions("GK")[0] == pytest.approx(147.11280, abs=1e-4)  # y1 of tryptic K
    assert C.b_ions("GK")[0] == pytest.approx(58.02874, abs=1e-4)
    # every fragment equals pyteomics' own ion-type formula
    from pyteomics import mass

    pep = "ACDEFGHIKLMNPQRSTVWY"
    for i in range(1, len(pep)):
        assert C.b_ions(pep)[i - 1] == pytest.approx(
            mass.fast_mass(pep[:i], ion_type="b", charge=1), abs=1e-6
        )
        assert C.y_ions(pep)[i - 1] == pytest.approx(
            mass.fast_mass(pep[-i:], ion_type="y", charge=1), abs=1e-6
        )


def test_synthetic_spectra_hold_the_kept_ions_and_are_seeded() -> None:
    spec = C.SpectrumConfig(p_drop=0.0, n_noise=3)
    peps, batch = C.synthetic_batch(4, spec, torch.Generator().manual_seed(0))
    peps2, batch2 = C.synthetic_batch(4, spec, torch.Generator().manual_seed(0))
    assert peps == peps2 and torch.equal(batch["mz"], batch2["mz"])
    for i, p in enumerate(peps):
        mz = batch["mz"][i][batch["peaks_mask"][i]]
        assert len(mz) == 2 * (len(p) - 1) + 3
        assert torch.all(mz[1:] >= mz[:-1])
        for ion in C.b_ions(p) + C.y_ions(p):
            assert torch.min((mz - ion).abs()) < 1e-3
    dropped = C.SpectrumConfig(p_drop=0.5, n_noise=0)
    peps, batch = C.synthetic_batch(50, dropped, torch.Generator().manual_seed(1))
    n_ions = sum(2 * (len(p) - 1) for p in peps)
    kept = int(batch["peaks_mask"].sum())
    assert 0.35 < kept / n_ions < 0.65  # ~half dropped (binomial, n > 600)


def _hybrid() -> tuple[C.CrossNovo, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = C.CrossNovo(C.CrossNovoConfig(d_model=32, enc_layers=1, dec_layers=1))
    peps, batch = C.synthetic_batch(3, C.SpectrumConfig(), torch.Generator().manual_seed(2))
    ids, lengths = C.targets(peps, model.cfg.max_len)
    return model, batch, ids, lengths


def test_ar_loss_gives_zero_gradient_on_nar_only_parameters() -> None:
    model, batch, ids, lengths = _hybrid()
    model.losses(batch, ids, lengths)["ar"].backward()
    nar_only = {id(p) for p in model.nar_only_parameters()}
    assert nar_only
    for p in model.nar_only_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    # the AR loss does reach the shared encoder and the AR decoder
    for name, p in model.named_parameters():
        if name.startswith(("encoder.", "ar_decoder.")):
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    # and the check can fail: the NAR loss, and an AR loss on *undetached* NAR states,
    # both give the NAR decoder non-zero gradients
    model.zero_grad(set_to_none=True)
    model.losses(batch, ids, lengths)["nar"].backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.nar_decoder.parameters()
    )
    model.zero_grad(set_to_none=True)
    memory, pad = model.encode(batch)
    h, _ = model.nar(memory, pad)
    mem = torch.cat([memory + model.cross_tag[0], h + model.cross_tag[1]], 1)
    mem_pad = torch.cat([pad, torch.zeros_like(pad[:, :1]).expand(-1, h.shape[1])], 1)
    prefix = torch.cat([torch.full_like(ids[:, :1], C.BOS), ids[:, :-1]], 1)
    logits = model.ar_logits(prefix, mem, mem_pad)
    torch.nn.functional.cross_entropy(logits.reshape(-1, C.VOCAB), ids.reshape(-1)).backward()
    assert model.nar_queries.grad is not None and model.nar_queries.grad.abs().sum() > 0


def test_beam_one_is_greedy() -> None:
    model, batch, _, _ = _hybrid()
    model.eval()
    got = model.beam_search(batch, beam=1)
    with torch.no_grad():
        memory, pad = model.encode(batch)
        mem, mem_pad = model._ar_memory(memory, pad, model.nar(memory, pad)[0])
        seq = torch.full((3, 1), C.BOS)
        for _ in range(model.cfg.max_len + 1):
            lp = model.ar_logits(seq, mem, mem_pad)[:, -1].log_softmax(-1)
            lp[:, [C.PAD, C.BOS]] = -float("inf")
            if seq.shape[1] > model.cfg.max_len:
                lp[:, C.OFFSET :] = -float("inf")
            seq = torch.cat([seq, lp.argmax(-1, keepdim=True)], 1)
    ref = [C.decode_tokens(row[1:]) for row in seq.tolist()]
    assert got == ref


def test_metrics_mass_tolerant_and_i_equals_l() -> None:
    assert C.aa_match("PEPTIDE", "PEPTLDE") == (7, True)  # I = L
    assert C.aa_match("PEPTIDE", "PEPTIDE") == (7, True)
    # GG (114.04293) has N's mass (114.04293): the prefix mass realigns after it
    assert C.aa_match("GGPE", "NPE") == (2, False)
    assert C.aa_match("KPE", "QPE") == (3, True)  # K/Q differ by 0.036 Da < 0.1
    assert C.aa_match("KPE", "QPE", tol=0.01)[0] == 0  # prefix shifted: nothing aligns
    m = C.metrics(["PEPTIDE", "AAA", ""], ["PEPTIDE", "AAG", "GG"])
    assert m == pytest.approx(
        {"aa_precision": 9 / 10, "aa_recall": 9 / 12, "peptide_recall": 1 / 3}
    )


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="standard residues"):
        C.b_ions("PEPXIDE")
    with pytest.raises(ValueError, match="empty"):
        C.y_ions("")
    with pytest.raises(ValueError, match="mode"):
        C.CrossNovoConfig(mode="both")
    with pytest.raises(ValueError, match="min_len"):
        C.SpectrumConfig(min_len=8, max_len=4)
    with pytest.raises(ValueError, match="no NAR decoder"):
        C.CrossNovo(C.CrossNovoConfig(mode="ar")).decode_nar({})
    with pytest.raises(ValueError, match="predictions"):
        C.metrics(["A"], [])


def test_recipe_text_peptides_runs(tmp_path: object) -> None:
    """The recipe trains the three models and its table holds what evaluate returns."""
    from pathlib import Path

    from ar_core import registry
    from ar_text.recipes.peptides import PeptidesConfig, recipe

    assert registry.recipes.get("text-peptides") is recipe and not recipe.in_demo
    cfg = PeptidesConfig(steps=2, eval_spectra=3, batch_size=4)
    result = recipe.run(cfg, Path(str(tmp_path)), lambda _: None)
    rows = result.tables[0].rows
    assert [r[0] for r in rows] == ["hybrid (CrossNovo)", "AR only", "NAR only"]
    assert [r[3] for r in rows] == [
        round(result.metrics[f"{m}_peptide_recall"], 3) for m in ("hybrid", "ar", "nar")
    ]
