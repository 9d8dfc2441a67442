"""CrossNovo-style de novo peptide sequencing on synthetic spectra.

* masses: monoisotopic residue masses from ``pyteomics.mass`` (``pip install
  ar-text[bio]``); singly charged b ions ``sum(prefix) + proton`` and y ions
  ``sum(suffix) + water + proton``;
* synthetic spectra: random peptides' b/y ions with dropped peaks and uniform noise
  peaks (seeded), the precursor mass and charge;
* one shared spectrum encoder (peaks as sinusoidal m/z embeddings plus intensity, a
  precursor token), a NAR decoder trained with CTC, an AR decoder whose cross-attention
  reads the encoder's peaks *and* the NAR decoder's states (cross-decoder attention);
  the NAR states are detached before the AR decoder reads them (gradient blocking: the
  AR loss never reaches NAR-only parameters); the losses are mixed by an importance
  schedule (AR weight annealed from 0 to 1); AR beam search.

I and L have the same mass: a peptide's I is tokenised as L (``I = L``), and the metrics
compare residues by mass. The annealing schedule's shape is a parameter (the paper's is
unverified here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROTON = 1.007276466812
RESIDUES = "ACDEFGHKLMNPQRSTVWY"  # I is written as L (same mass)
PAD, BOS, EOS = 0, 1, 2  # PAD is also CTC's blank
OFFSET = 3
VOCAB = OFFSET + len(RESIDUES)


def _mass_module():  # type: ignore[no-untyped-def]
    try:
        from pyteomics import mass
    except ImportError as e:  # pragma: no cover - pyteomics is a dev dependency
        raise ImportError(
            "ar_text.bio needs pyteomics for residue and ion masses: pip install ar-text[bio]"
        ) from e
    return mass


def residue_masses() -> dict[str, float]:
    """Monoisotopic residue masses (Da) of the 20 standard amino acids (pyteomics)."""
    mass = _mass_module()
    return {aa: float(mass.std_aa_mass[aa]) for aa in RESIDUES + "I"}


def water_mass() -> float:
    return float(_mass_module().calculate_mass(formula="H2O"))


def _check_peptide(peptide: str) -> str:
    bad = sorted(set(peptide) - set(RESIDUES + "I"))
    if not peptide or bad:
        raise ValueError(
            f"peptide {peptide!r}: expected a non-empty string of the 20 standard residues "
            f"(one-letter codes), got {'an empty string' if not peptide else f'letters {bad}'}"
        )
    return peptide


def b_ions(peptide: str) -> list[float]:
    """Singly charged b1..b(n-1) m/z: sum of the first i residues + proton."""
    m = residue_masses()
    _check_peptide(peptide)
    out, acc = [], 0.0
    for aa in peptide[:-1]:
        acc += m[aa]
        out.append(acc + PROTON)
    return out


def y_ions(peptide: str) -> list[float]:
    """Singly charged y1..y(n-1) m/z: sum of the last i residues + water + proton."""
    m = residue_masses()
    _check_peptide(peptide)
    out, acc, w = [], 0.0, water_mass()
    for aa in reversed(peptide[1:]):
        acc += m[aa]
        out.append(acc + w + PROTON)
    return out


def encode_peptide(peptide: str) -> list[int]:
    """Token ids (I -> L), without BOS/EOS."""
    return [OFFSET + RESIDUES.index("L" if a == "I" else a) for a in _check_peptide(peptide)]


def decode_tokens(tokens: list[int]) -> str:
    """Residues up to the first EOS; PAD/BOS are skipped."""
    out = []
    for t in tokens:
        if t == EOS:
            break
        if t >= OFFSET:
            out.append(RESIDUES[t - OFFSET])
    return "".join(out)


# -- synthetic spectra ------------------------------------------------------------------


@dataclass
class SpectrumConfig:
    min_len: int = 6
    max_len: int = 10
    p_drop: float = 0.2  # each b/y peak is dropped with this probability
    n_noise: int = 6  # uniform noise peaks per spectrum
    charge: int = 2

    def __post_init__(self) -> None:
        if not 2 <= self.min_len <= self.max_len:
            raise ValueError(
                f"SpectrumConfig: need 2 <= min_len <= max_len, got {self.min_len}, {self.max_len}"
            )
        if not 0.0 <= self.p_drop < 1.0 or self.n_noise < 0 or self.charge < 1:
            raise ValueError(
                f"SpectrumConfig: p_drop in [0, 1), n_noise >= 0, charge >= 1; got "
                f"{self.p_drop}, {self.n_noise}, {self.charge}"
            )

    @property
    def max_peaks(self) -> int:
        return 2 * (self.max_len - 1) + self.n_noise


def synthetic_batch(
    n: int, cfg: SpectrumConfig, generator: torch.Generator
) -> tuple[list[str], dict[str, Tensor]]:
    """``n`` random peptides and their spectra: ``mz``/``intensity`` (n, P) sorted by m/z
    and zero-padded, ``peaks_mask`` (True = real entry), ``precursor`` mass (n,) and
    ``charge`` (n,)."""
    if n < 1:
        raise ValueError(f"synthetic_batch: n must be >= 1, got {n}")
    m = residue_masses()
    w = water_mass()
    P = cfg.max_peaks
    mz = torch.zeros(n, P)
    inten = torch.zeros(n, P)
    mask = torch.zeros(n, P, dtype=torch.bool)
    prec = torch.zeros(n)
    peptides = []
    for i in range(n):
        length = int(torch.randint(cfg.min_len, cfg.max_len + 1, (1,), generator=generator))
        idx = torch.randint(0, len(RESIDUES), (length,), generator=generator).tolist()
        pep = "".join(RESIDUES[j] for j in idx)
        peptides.append(pep)
        total = sum(m[a] for a in pep) + w
        ions = torch.tensor(b_ions(pep) + y_ions(pep))
        keep = torch.rand(len(ions), generator=generator) >= cfg.p_drop
        ions = ions[keep]
        ion_int = 0.3 + 0.7 * torch.rand(len(ions), generator=generator)
        noise = 50.0 + (total - 50.0) * torch.rand(cfg.n_noise, generator=generator)
        noise_int = 0.4 * torch.rand(cfg.n_noise, generator=generator)
        allmz = torch.cat([ions, noise])
        allint = torch.cat([ion_int, noise_int])
        order = torch.argsort(allmz)
        k = len(order)
        mz[i, :k] = allmz[order]
        inten[i, :k] = allint[order]
        mask[i, :k] = True
        prec[i] = total
    batch = {
        "mz": mz,
        "intensity": inten,
        "peaks_mask": mask,
        "precursor": prec,
        "charge": torch.full((n,), cfg.charge, dtype=torch.long),
    }
    return peptides, batch


def targets(peptides: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """(ids (n, max_len+1) residues then EOS then PAD, lengths (n,) without EOS)."""
    ids = torch.full((len(peptides), max_len + 1), PAD, dtype=torch.long)
    lengths = torch.zeros(len(peptides), dtype=torch.long)
    for i, p in enumerate(peptides):
        t = encode_peptide(p)
        if len(t) > max_len:
            raise ValueError(f"peptide {p!r} is longer than max_len={max_len}")
        ids[i, : len(t)] = torch.tensor(t)
        ids[i, len(t)] = EOS
        lengths[i] = len(t)
    return ids, lengths


# -- model ------------------------------------------------------------------------------


def sinusoid(x: Tensor, dim: int, lo: float = 1e-3, hi: float = 1e4) -> Tensor:
    """Sinusoidal embedding of masses (wavelengths geometric from ``lo`` to ``hi`` Da)."""
    half = dim // 2
    wl = lo * (hi / lo) ** (torch.arange(half, dtype=x.dtype, device=x.device) / (half - 1))
    ang = 2 * math.pi * x[..., None] / wl
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1)


@dataclass
class CrossNovoConfig:
    d_model: int = 64
    n_heads: int = 4
    enc_layers: int = 2
    dec_layers: int = 2
    max_len: int = 10
    nar_len: int = 20  # NAR (CTC) output slots, >= 2 * max_len - 1 for repeated residues
    mode: str = "hybrid"  # hybrid | ar | nar
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("hybrid", "ar", "nar"):
            raise ValueError(f"CrossNovoConfig.mode must be hybrid, ar or nar, got {self.mode!r}")
        if self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(
                f"CrossNovoConfig: d_model={self.d_model} must be even and divisible by "
                f"n_heads={self.n_heads}"
            )
        if self.nar_len < self.max_len:
            raise ValueError(
                f"CrossNovoConfig: nar_len={self.nar_len} must be >= max_len={self.max_len}"
            )


def _decoder(cfg: CrossNovoConfig) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(
        cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout, batch_first=True
    )
    return nn.TransformerDecoder(layer, cfg.dec_layers)


class CrossNovo(nn.Module):
    """Shared spectrum encoder, NAR (CTC) decoder and AR decoder with cross-decoder
    attention. ``mode`` 'ar' and 'nar' build the single-decoder baselines."""

    def __init__(self, cfg: CrossNovoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.peak_proj = nn.Linear(d + 1, d)
        self.charge_emb = nn.Embedding(8, d)
        enc_layer = nn.TransformerEncoderLayer(d, cfg.n_heads, 4 * d, cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc_layer, cfg.enc_layers)
        if cfg.mode in ("hybrid", "nar"):
            self.nar_queries = nn.Parameter(torch.randn(cfg.nar_len, d) * 0.02)
            self.nar_decoder = _decoder(cfg)
            self.nar_head = nn.Linear(d, VOCAB)
        if cfg.mode in ("hybrid", "ar"):
            self.tok_emb = nn.Embedding(VOCAB, d)
            self.pos_emb = nn.Embedding(cfg.max_len + 2, d)
            self.ar_decoder = _decoder(cfg)
            self.ar_head = nn.Linear(d, VOCAB)
            if cfg.mode == "hybrid":
                self.cross_tag = nn.Parameter(torch.zeros(2, d))  # peaks vs NAR states

    def nar_only_parameters(self) -> list[nn.Parameter]:
        if self.cfg.mode == "ar":
            return []
        return [self.nar_queries, *self.nar_decoder.parameters(), *self.nar_head.parameters()]

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        d = self.cfg.d_model
        mz, inten, mask = batch["mz"], batch["intensity"], batch["peaks_mask"]
        peaks = self.peak_proj(torch.cat([sinusoid(mz, d), inten[..., None]], -1))
        prec = sinusoid(batch["precursor"], d) + self.charge_emb(batch["charge"].clamp(0, 7))
        x = torch.cat([prec[:, None], peaks], 1)
        pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], 1)
        return self.encoder(x, src_key_padding_mask=pad), pad

    def nar(self, memory: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        """(NAR decoder states (B, nar_len, d), CTC logits)."""
        q = self.nar_queries.expand(memory.shape[0], -1, -1)
        h = self.nar_decoder(q, memory, memory_key_padding_mask=pad)
        return h, self.nar_head(h)

    def _ar_memory(
        self, memory: Tensor, pad: Tensor, nar_states: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if nar_states is None:
            return memory, pad
        # cross-decoder attention: the AR decoder attends to the peaks and to the NAR
        # decoder's states, detached (gradient blocking)
        h = nar_states.detach()
        mem = torch.cat([memory + self.cross_tag[0], h + self.cross_tag[1]], 1)
        return mem, torch.cat([pad, torch.zeros_like(pad[:, :1]).expand(-1, h.shape[1])], 1)

    def ar_logits(self, prefix: Tensor, mem: Tensor, mem_pad: Tensor) -> Tensor:
        T = prefix.shape[1]
        x = self.tok_emb(prefix) + self.pos_emb(torch.arange(T, device=prefix.device))
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=prefix.device), 1)
        h = self.ar_decoder(x, mem, tgt_mask=causal, memory_key_padding_mask=mem_pad)
        return self.ar_head(h)

    def losses(self, batch: dict[str, Tensor], ids: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """'nar' (CTC, mean over rows) and/or 'ar' (token cross-entropy incl. EOS)."""
        memory, pad = self.encode(batch)
        out: dict[str, Tensor] = {}
        nar_states = None
        if self.cfg.mode in ("hybrid", "nar"):
            nar_states, logits = self.nar(memory, pad)
            lp = logits.log_softmax(-1).transpose(0, 1)  # (T, B, V)
            tl = torch.full((ids.shape[0],), self.cfg.nar_len, dtype=torch.long)
            out["nar"] = F.ctc_loss(
                lp, ids[:, : self.cfg.max_len], tl, lengths, blank=PAD, zero_infinity=True
            )
        if self.cfg.mode in ("hybrid", "ar"):
            mem, mem_pad = self._ar_memory(memory, pad, nar_states)
            prefix = torch.cat([torch.full_like(ids[:, :1], BOS), ids[:, :-1]], 1)
            logits = self.ar_logits(prefix, mem, mem_pad)
            out["ar"] = F.cross_entropy(
                logits.reshape(-1, VOCAB), ids.reshape(-1), ignore_index=PAD
            )
        return out

    @torch.no_grad()
    def decode_nar(self, batch: dict[str, Tensor]) -> list[str]:
        """Greedy CTC: argmax per slot, merge repeats, drop blanks."""
        if self.cfg.mode == "ar":
            raise ValueError("decode_nar: this model has no NAR decoder (mode='ar')")
        memory, pad = self.encode(batch)
        _, logits = self.nar(memory, pad)
        out = []
        for row in logits.argmax(-1).tolist():
            toks = [t for j, t in enumerate(row) if t != PAD and (j == 0 or t != row[j - 1])]
            out.append(decode_tokens([t for t in toks if t >= OFFSET]))
        return out

    @torch.no_grad()
    def beam_search(self, batch: dict[str, Tensor], beam: int = 4) -> list[str]:
        """AR beam search (sum of log-probs); among finished beams the best one whose mass
        matches the precursor within 0.05 Da is returned, else the best finished one."""
        if self.cfg.mode == "nar":
            raise ValueError("beam_search: this model has no AR decoder (mode='nar')")
        if beam < 1:
            raise ValueError(f"beam_search: beam must be >= 1, got {beam}")
        memory, pad = self.encode(batch)
        nar_states = self.nar(memory, pad)[0] if self.cfg.mode == "hybrid" else None
        mem, mem_pad = self._ar_memory(memory, pad, nar_states)
        masses = residue_masses()
        w = water_mass()
        results = []
        for b in range(mem.shape[0]):
            m1, p1 = mem[b : b + 1], mem_pad[b : b + 1]
            live: list[tuple[float, list[int]]] = [(0.0, [BOS])]
            done: list[tuple[float, list[int]]] = []
            for _ in range(self.cfg.max_len + 1):
                prefix = torch.tensor([s for _, s in live])
                k = len(live)
                lp = self.ar_logits(prefix, m1.expand(k, -1, -1), p1.expand(k, -1))[:, -1]
                lp = lp.log_softmax(-1)
                lp[:, PAD] = lp[:, BOS] = -math.inf
                if prefix.shape[1] > self.cfg.max_len:
                    lp[:, OFFSET:] = -math.inf
                cand = []
                for i, (score, seq) in enumerate(live):
                    top = torch.topk(lp[i], beam)
                    for v, t in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                        cand.append((score + v, [*seq, t]))
                cand.sort(key=lambda c: -c[0])
                live = []
                for score, seq in cand[:beam]:
                    (done if seq[-1] == EOS else live).append((score, seq))
                if not live:
                    break
            done.sort(key=lambda c: -c[0])
            target = float(batch["precursor"][b])

            fitting = [s for _, s in done if _fits(decode_tokens(s[1:]), target, masses, w)]
            best = fitting[0] if fitting else (done[0][1] if done else [BOS])
            results.append(decode_tokens(best[1:]))
        return results


def _fits(pep: str, target: float, masses: dict[str, float], water: float) -> bool:
    return bool(pep) and abs(sum(masses[a] for a in pep) + water - target) < 0.05


def importance(step: int, total: int, warm: float = 0.5) -> tuple[float, float]:
    """(NAR weight, AR weight): the AR weight is annealed linearly from 0 to 1 over the
    first ``warm`` fraction of training, the NAR weight from 1 down to 0.5."""
    lam = min(1.0, step / max(1.0, warm * total))
    return 1.0 - 0.5 * lam, lam


# -- metrics ----------------------------------------------------------------------------


def aa_match(pred: str, true: str, tol: float = 0.1) -> tuple[int, bool]:
    """(residues of ``pred`` matched in ``true``, whole peptide matched). A predicted
    residue matches when its mass and the prefix mass before it agree with a true residue's
    within ``tol`` Da (so I = L, and a shifted prefix breaks the run)."""
    m = residue_masses()
    i = j = 0
    pm = tm = 0.0
    hits = 0
    while i < len(pred) and j < len(true):
        a, b = m[pred[i]], m[true[j]]
        if abs(pm - tm) < tol:
            if abs(a - b) < tol:
                hits += 1
            pm += a
            tm += b
            i += 1
            j += 1
        elif pm < tm:
            pm += a
            i += 1
        else:
            tm += b
            j += 1
    whole = len(pred) == len(true) and hits == len(true)
    return hits, whole


def metrics(preds: list[str], trues: list[str], tol: float = 0.1) -> dict[str, float]:
    """Amino-acid precision and recall (mass-tolerant matches / predicted or true
    residues) and peptide recall (fraction of peptides fully matched)."""
    if len(preds) != len(trues) or not trues:
        raise ValueError(f"metrics: {len(preds)} predictions for {len(trues)} peptides")
    hits = n_pred = n_true = whole = 0
    for p, t in zip(preds, trues, strict=True):
        h, w = aa_match(p, t, tol) if p else (0, False)
        hits += h
        whole += w
        n_pred += len(p)
        n_true += len(t)
    return {
        "aa_precision": hits / max(1, n_pred),
        "aa_recall": hits / n_true,
        "peptide_recall": whole / len(trues),
    }


# -- training and the three-way comparison ----------------------------------------------


def train(
    mode: str,
    steps: int,
    *,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 1e-3,
    spec: SpectrumConfig | None = None,
    cfg: CrossNovoConfig | None = None,
) -> CrossNovo:
    """Train one model (hybrid, ar or nar) on fresh synthetic spectra each step."""
    spec = spec or SpectrumConfig()
    cfg = cfg or CrossNovoConfig(max_len=spec.max_len, nar_len=2 * spec.max_len, mode=mode)
    if cfg.mode != mode:
        cfg = CrossNovoConfig(**{**cfg.__dict__, "mode": mode})
    torch.manual_seed(seed)
    model = CrossNovo(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        peps, batch = synthetic_batch(batch_size, spec, gen)
        ids, lengths = targets(peps, cfg.max_len)
        ls = model.losses(batch, ids, lengths)
        w_nar, w_ar = importance(step, steps) if mode == "hybrid" else (1.0, 1.0)
        loss = w_nar * ls.get("nar", torch.zeros(())) + w_ar * ls.get("ar", torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


def evaluate(
    model: CrossNovo,
    n: int = 200,
    seed: int = 12345,
    beam: int = 4,
    spec: SpectrumConfig | None = None,
) -> dict[str, float]:
    """Metrics on ``n`` held-out spectra (AR beam search, or greedy CTC for 'nar')."""
    spec = spec or SpectrumConfig(max_len=model.cfg.max_len)
    peps, batch = synthetic_batch(n, spec, torch.Generator().manual_seed(seed))
    if model.cfg.mode == "nar":
        preds = model.decode_nar(batch)
    else:
        preds = model.beam_search(batch, beam=beam)
    return metrics(preds, peps)
