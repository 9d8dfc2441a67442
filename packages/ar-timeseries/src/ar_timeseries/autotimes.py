"""AutoTimes (Liu et al., NeurIPS 2024): a frozen causal LM as an autoregressive forecaster.

A look-back window x (B, L) is normalised by its own mean and standard deviation, cut
into N = L / ``token_len`` segments, and each segment is embedded (linear or MLP
``token_len -> C``) as one LM "token". The segment's timestamp prompt ("This is Time
Series from {start} to {end}") is embedded by the same frozen LM (its last position's
hidden state, computed the first time a segment start is used and kept:
:meth:`AutoTimes.set_timestamps`);
both are L2-normalised and added as ``seg / |seg| + scale * ts / |ts|`` with a learned
``scale``. The frozen LM runs causally over the N tokens and a decoder (``C ->
token_len``) reads each position's hidden state as the *next* segment: training is
next-segment MSE over every position, so one model learns all context lengths 1..N.

A forecast of any horizon H rolls out ceil(H / token_len) steps with a sliding window:
each step normalises the current window, predicts one segment and slides the window by
it, so the same model serves horizons 96, 192, 336 and 720 that it never trained on.

In-context forecasting: earlier windows of a series (``context``, normalised by their own
statistics) are embedded the same way and put in front of the look-back tokens, so the LM
sees them as a demonstration; the forecast reads only the look-back positions' outputs.

Only the embedder, the decoder and ``scale`` are trainable; the LM is a
:class:`~ar_timeseries.lm.FrozenLM`.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
from torch import Tensor, nn

from ar_core.errors import ConfigError, InputError
from ar_timeseries.lm import FrozenLM

EPS = 1e-5


def _mlp(n_in: int, n_out: int, kind: str, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def timestamp_prompt(start: pd.Timestamp, end: pd.Timestamp) -> str:
    return f"This is Time Series from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"


class AutoTimes(nn.Module):
    """See the module docstring. ``forecast(x, horizon, pos)``: (B, L) -> (B, H)."""

    def __init__(
        self,
        lm: FrozenLM,
        seq_len: int,
        token_len: int,
        kind: Literal["linear", "mlp"] = "mlp",
        hidden: int = 256,
        use_timestamps: bool = True,
    ) -> None:
        super().__init__()
        if seq_len % token_len:
            raise ConfigError(
                f"seq_len={seq_len} is not a multiple of token_len={token_len}; AutoTimes cuts "
                f"the look-back into whole segments: pick seq_len = k * token_len"
            )
        self.lm = lm
        self.seq_len, self.token_len = seq_len, token_len
        self.use_timestamps = use_timestamps
        self.embedder = _mlp(token_len, lm.dim, kind, hidden)
        self.decoder = _mlp(lm.dim, token_len, kind, hidden)
        self.scale = nn.Parameter(torch.ones(()))
        self.dates = pd.DatetimeIndex([])
        self.ts_table = torch.zeros(0, lm.dim)  # filled on demand, never saved
        self.ts_filled = torch.zeros(0, dtype=torch.bool)

    # -- timestamps ---------------------------------------------------------------------
    def set_timestamps(self, dates: pd.DatetimeIndex) -> None:
        """Use ``dates`` (extended with :func:`~ar_timeseries.data.future_dates` for
        rollouts past the end) for the prompts; each segment's prompt is embedded by the
        LM the first time a window needs it, then kept (``ts_table``, ``ts_filled``)."""
        self.dates = dates
        n = max(0, len(dates) - self.token_len + 1)
        self.ts_table = torch.zeros(n, self.lm.dim)
        self.ts_filled = torch.zeros(n, dtype=torch.bool)

    @torch.no_grad()
    def _fill(self, rows: Tensor, batch_size: int = 512) -> None:
        need = rows.unique()
        need = need[~self.ts_filled[need]]
        if need.numel() == 0:
            return
        texts = [
            timestamp_prompt(self.dates[i], self.dates[i + self.token_len - 1])
            for i in need.tolist()
        ]
        feats = self.lm.text_features(texts, batch_size)
        self.ts_table[need] = feats / feats.norm(dim=-1, keepdim=True).clamp(min=EPS)
        self.ts_filled[need] = True

    def _timestamps(self, pos: Tensor | None, n_tokens: int) -> Tensor | None:
        """(B, N, C) L2-normalised prompt features of segments starting at
        ``pos + k * token_len``; None when timestamps are off."""
        if not self.use_timestamps:
            return None
        if pos is None:
            raise InputError("this AutoTimes uses timestamps: pass pos (each window's first row)")
        idx = pos[:, None].cpu() + self.token_len * torch.arange(n_tokens)
        if int(idx.max()) >= self.ts_table.shape[0] or int(idx.min()) < 0:
            raise InputError(
                f"segment start {int(idx.max())} has no timestamp (the dates cover "
                f"{self.ts_table.shape[0]} segment starts); call set_timestamps(dates extended "
                f"past the forecast end)"
            )
        self._fill(idx.flatten())
        return self.ts_table[idx].to(self.scale.device)

    # -- the model ----------------------------------------------------------------------
    def _tokens(self, x: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L') window -> (normalised-space embeddings (B, N, C), mean, std)."""
        mean = x.mean(dim=1, keepdim=True)
        std = (x.var(dim=1, keepdim=True, unbiased=False) + EPS).sqrt()
        segs = ((x - mean) / std).view(x.shape[0], -1, self.token_len)  # (B, N, P)
        emb = self.embedder(segs)  # (B, N, C)
        ts = self._timestamps(pos, segs.shape[1])
        if ts is not None:
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=EPS) + self.scale * ts
        return emb, mean, std

    def next_segments(
        self,
        x: Tensor,
        pos: Tensor | None = None,
        context: Tensor | None = None,
        context_pos: Tensor | None = None,
    ) -> Tensor:
        """(B, L') -> (B, N, token_len): position k's prediction of segment k + 1, in the
        scale of ``x``; ``context`` (B, Lc) earlier values put in front (in-context)."""
        if x.shape[1] % self.token_len:
            raise InputError(
                f"the window has {x.shape[1]} values, not a multiple of token_len={self.token_len}"
            )
        emb, mean, std = self._tokens(x, pos)
        n_ctx = 0
        if context is not None:
            if context.shape[1] % self.token_len:
                raise InputError(
                    f"the context has {context.shape[1]} values, not a multiple of token_len="
                    f"{self.token_len}"
                )
            ctx, _, _ = self._tokens(context, context_pos)
            n_ctx = ctx.shape[1]
            emb = torch.cat([ctx, emb], dim=1)
        hidden = self.lm.hidden(emb)[:, n_ctx:]  # (B, N, C)
        out = self.decoder(hidden)  # (B, N, P) normalised
        return out * std[:, :, None] + mean[:, :, None]

    def loss(self, x: Tensor, y: Tensor, pos: Tensor | None = None) -> Tensor:
        """Next-segment MSE: ``x`` (B, L), ``y`` (B, token_len) the segment after it."""
        full = torch.cat([x, y[:, : self.token_len]], dim=1)
        pred = self.next_segments(x, pos)  # (B, N, P)
        target = full[:, self.token_len :].reshape(pred.shape)
        return nn.functional.mse_loss(pred, target)

    @torch.no_grad()
    def forecast(
        self,
        x: Tensor,
        horizon: int,
        pos: Tensor | None = None,
        context: Tensor | None = None,
        context_pos: Tensor | None = None,
    ) -> Tensor:
        """Roll out ``horizon`` values after each window of ``x`` (B, L)."""
        window, out = x, []
        p = pos
        for _ in range(-(-horizon // self.token_len)):
            seg = self.next_segments(window, p, context, context_pos)[:, -1]  # (B, P)
            out.append(seg)
            window = torch.cat([window[:, self.token_len :], seg], dim=1)
            p = None if p is None else p + self.token_len
        return torch.cat(out, dim=1)[:, :horizon]
