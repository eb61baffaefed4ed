"""ATAT: Astronomical Transformer for time series And Tabular data (Cabrera-Vives et al. 2024).

Two transformers, one over the light curve and one over tabular features, each with a CLS
token; a head on each CLS and a mixed head on both. The model takes the arrays of
:class:`astro_classifier.features.preprocess.ModelInputs` and returns class probabilities of
the mixed head; `forward_logits` returns all three heads' logits for the training loss, and
`forward_embedding` the vector the mixed head reads with its logits (export: the
``embedding`` output and the out-of-distribution score fitted on it).

Everything here exports to plain ONNX ops (Gather, MatMul, Softmax, Where, IsNaN): the
quantile tables of the feature tokenizer are buffers, so the exported graph normalises raw
feature values itself. Attention is dense and deterministic. Called with
``export_form=True`` (the export graph passes it; training and torch inference never do), the
modules compute their export forms instead (the ``exported`` methods): the same outputs in
less work for ONNX Runtime. Attention becomes its fused ``com.microsoft.MultiHeadAttention``
kernel (it never materialises the (B, H, T, T) score tensor; the graph then needs ONNX
Runtime, which serves every model), an encoder's last block scores its CLS query in the input
space, the light-curve tokens gather each band's points (NonZero, ScatterND), and the feature
tokenizer folds to one clip. Each is tested against the training form and checked at export.
With ``export_form=DENSE_FORM`` (the CUDA companion graph) the light-curve tokens keep their
one-hot arithmetic instead (:meth:`TimeModulatedTokens.dense`): no data-dependent shape, so
ONNX Runtime's CUDA provider runs a call without synchronising with the host and can capture
it as a CUDA graph.

:class:`ATATFamily` is ATAT's :class:`~astro_classifier.families.base.Family`: the summed
cross-entropy of the three heads, ``forward_embedding`` as export form (with the class-Gaussian
OOD score on its embedding), warm starts from an exported file, the render pretraining of its
two encoders, a float16 export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from astro_classifier.families.base import Batch, ExportOutputs, Family, multi_head_loss
from astro_classifier.features.preprocess import ModelInputs

# Added to the attention scores of padding: exp() of it underflows to exactly 0 in float32,
# and it stays finite in float16. Every row keeps its CLS score, so none is all masked.
MASKED_SCORE = -1.0e4

# The ``export_form`` of the CUDA companion graph: every module's export form except the
# light-curve tokens, which keep their one-hot arithmetic (TimeModulatedTokens.dense), so the
# graph has no data-dependent shape (no NonZero, no ScatterND): on CUDA, no device-to-host
# synchronisation inside a call, and the graph can be captured as a CUDA graph.
DENSE_FORM = "dense"


@dataclass(frozen=True)
class ATATConfig:
    n_classes: int
    n_bands: int
    n_features: int
    d_model: int = 64
    n_heads: int = 4
    lc_layers: int = 3
    tab_layers: int = 2
    ff_mult: int = 2
    n_harmonics: int = 16  # Fourier terms of the time modulation
    time_period_days: float = 1500.0  # longest period of the Fourier basis
    n_quantiles: int = 64  # rows of each feature's quantile table
    dropout: float = 0.1  # residual and head dropout (none inside attention)


class _FusedAttention(torch.autograd.Function):
    """Unmasked multi-head attention of (B, S, N*Dqk) q, (B, T, N*Dqk) k and (B, T, N*Dv) v.

    ``forward`` is the reference math the tracer runs; ``symbolic`` is what the graph holds:
    ``com.microsoft.MultiHeadAttention`` with no mask input, which ONNX Runtime's CPU
    provider runs with its flash-attention kernel (given a key-padding mask input it falls
    back to a kernel ~1.7x slower). Padding is masked through the keys instead, see
    :meth:`Attention.exported`.
    """

    @staticmethod
    def forward(ctx, q, k, v, n_heads: int, scale: float):  # noqa: ANN001
        b, n = q.shape[:2]
        q, k, v = (z.reshape(b, z.shape[1], n_heads, -1).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return out.transpose(1, 2).reshape(b, n, -1)

    @staticmethod
    def symbolic(g, q, k, v, n_heads: int, scale: float):  # noqa: ANN001
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=n_heads, scale_f=scale)
        # (B, S, N*Dv): batch and query length are dynamic (S is 1 in an encoder's last
        # block, where v has T rows: v's full type would tell ONNX Runtime's memory planner
        # that both have the same size)
        vt = v.type()
        out.setType(vt.with_sizes([None, None, vt.varyingSizes()[-1]]))
        return out


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.scale = 1.0 / math.sqrt(d_model // n_heads)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        n_queries: int | None = None,
        export_form: bool | str = False,
    ) -> torch.Tensor:
        """``bias``: (B, 1, 1, T) additive mask, 0 = attend, MASKED_SCORE = ignore;
        ``keep``: the same as (B, T) bool, used by the export form (None: no padding);
        ``n_queries``: attend from the first n tokens only (all T keys stay): (B, n, C);
        ``export_form``: compute :meth:`exported` instead (the same result)."""
        if export_form:
            return self.exported(x, keep, n_queries)
        b, t, c = x.shape  # (B, T, C)
        if n_queries is None:
            q, k, v = self.qkv(x).chunk(3, dim=2)
        else:  # the query rows alone, and keys/values of every row
            weight, bias_qkv = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :n_queries], weight[:c], bias_qkv[:c])
            k, v = F.linear(x, weight[c:], bias_qkv[c:]).chunk(2, dim=2)
        q, k, v = (
            z.reshape(b, z.shape[1], self.n_heads, -1).transpose(1, 2) for z in (q, k, v)
        )  # (B, H, T or n, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, q.shape[2], c))

    def exported(
        self, x: torch.Tensor, keep: torch.Tensor | None, n_queries: int | None
    ) -> torch.Tensor:
        """Export form of :meth:`forward`, the same result in fewer memory passes:

        - projections over (B*T, C) rows, which export as ``Gemm`` with the bias fused (a 3-D
          input exports as ``MatMul`` then a separate ``Add``);
        - q, k and v each from their own rows of the packed weight (slices of a 192 x 64
          matrix per call, microseconds), so no split of a packed (B, T, 3C) output;
        - one attention kernel without a mask input (:class:`_FusedAttention`, flash kernel
          on the CPU): the padding mask rides on one extra query/key dimension per head,
          q' = [q, 1] and k' = [k, MASKED_SCORE / scale on padding, else 0], so that
          scale * q'.k' = scale * q.k + the additive mask of :meth:`forward` exactly. The 1
          comes out of the query projection itself (a zero weight row and a bias of 1 per
          head).
        """
        b, t, c = x.shape
        if n_queries is not None:
            return self.exported_few_queries(x, keep, n_queries)
        n = t
        h = self.n_heads
        head = c // h
        weight, bias = self.qkv.weight, self.qkv.bias
        rows = x.reshape(b * t, c)
        query_rows = rows if n_queries is None else x[:, :n].reshape(b * n, c)
        k = F.linear(rows, weight[c : 2 * c], bias[c : 2 * c])
        v = F.linear(rows, weight[2 * c :], bias[2 * c :])
        if keep is None:
            q = F.linear(query_rows, weight[:c], bias[:c])
        else:
            wq = torch.cat(
                [weight[:c].reshape(h, head, c), torch.zeros_like(weight[:h]).reshape(h, 1, c)],
                dim=1,
            ).reshape(h * (head + 1), c)
            bq = torch.cat(
                [bias[:c].reshape(h, head), torch.ones_like(bias[:h]).reshape(h, 1)], dim=1
            ).reshape(h * (head + 1))
            q = F.linear(query_rows, wq, bq)
            key_bias = torch.where(keep, 0.0, MASKED_SCORE / self.scale).reshape(b * t, 1, 1)
            k = torch.cat([k.reshape(b * t, h, head), key_bias.expand(-1, h, -1)], dim=2)
        out = _FusedAttention.apply(
            q.reshape(b, n, -1), k.reshape(b, t, -1), v.reshape(b, t, c), h, self.scale
        )
        return self.proj(out.reshape(b * n, c)).reshape(b, n, c)

    def exported_few_queries(
        self, x: torch.Tensor, keep: torch.Tensor | None, n: int
    ) -> torch.Tensor:
        """Export form of :meth:`forward` for the first ``n`` query rows (an encoder's last
        block, n = 1), without projecting the T rows to keys and values at all.

        Per head h, with k_t = W_k x_t + b_k and v_t = W_v x_t + b_v:
        q.k_t = (W_k^T q).x_t + q.b_k, and the last term is the same for every key, so the
        softmax drops it; sum_t p_t v_t = W_v (sum_t p_t x_t) + b_v, as the p_t sum to 1.
        So each query is mapped into the input space once (W_k^T q, C numbers per head),
        scored against the rows (B, T, n*H), and the softmax-weighted sum of the rows is
        projected by W_v afterwards: 2*C*H multiply-adds per row instead of the 2*C*C of
        the key and value projections (16x fewer at C=64, H=4).
        """
        b, t, c = x.shape
        h = self.n_heads
        head = c // h
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :n].reshape(b * n, c), weight[:c] * self.scale, bias[:c] * self.scale)
        w_key = weight[c : 2 * c].reshape(h, head, c)
        query_in = torch.matmul(q.reshape(b * n, h, head).transpose(0, 1), w_key)  # (H, B*n, C)
        query_in = query_in.transpose(0, 1).reshape(b, n * h, c)
        scores = torch.matmul(x, query_in.transpose(1, 2))  # (B, T, n*H)
        if keep is not None:
            scores = scores + torch.where(keep, 0.0, MASKED_SCORE).unsqueeze(-1)
        weights = torch.softmax(scores, dim=1)
        mixed = torch.matmul(weights.transpose(1, 2), x)  # (B, n*H, C)
        w_value = weight[2 * c :].reshape(h, head, c).transpose(1, 2)  # (H, C, D)
        out = torch.matmul(mixed.reshape(b * n, h, c).transpose(0, 1), w_value)  # (H, B*n, D)
        out = out.transpose(0, 1).reshape(b * n, c) + bias[2 * c :]
        return self.proj(out).reshape(b, n, c)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        n_queries: int | None = None,
        export_form: bool | str = False,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with ``n_queries``, only the first n rows are computed
        (they still attend to all T): (B, n, C). ``export_form``: see the module docstring."""
        attended = self.attn(self.norm1(x), bias, keep, n_queries, export_form)
        x = x if n_queries is None else x[:, :n_queries]
        x = x + self.dropout(attended)
        if export_form:  # over (B*T, C) rows: Gemm with the bias fused (see Attention.exported)
            b, t, c = x.shape
            return x + self.mlp(self.norm2(x).reshape(b * t, c)).reshape(b, t, c)
        return x + self.dropout(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    """CLS token + blocks + final norm; returns the CLS output (B, C)."""

    def __init__(self, cfg: ATATConfig, n_layers: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.ff_mult, cfg.dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.cls, std=0.02)

    def forward(
        self, tokens: torch.Tensor, keep: torch.Tensor | None, export_form: bool | str = False
    ) -> torch.Tensor:
        b = tokens.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)  # (B, 1 + T, C)
        bias = key_mask = None
        if keep is not None:  # keep: (B, T) bool, True = a real point
            keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)  # CLS is always kept
            # An additive mask, computed once: a boolean one exports to a Where over every
            # (B, H, T, T) score matrix, which took a quarter of ONNX Runtime's CPU time.
            # (Where on constants rather than a Cast: Cast targets survive fp16 conversion badly.)
            bias = torch.where(keep, 0.0, MASKED_SCORE)[:, None, None, :]
            key_mask = keep  # the export form masks through the keys (Attention.exported)
        # Only the CLS row of the last block is ever read: that block attends from CLS alone
        # (its keys and values still come from every row), which skips the rest of its
        # query projection, attention rows and MLP: the same output, a third less work
        # over three blocks.
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, bias, key_mask, 1 if i == last else None, export_form)
        return self.norm(x[:, 0])


class TimeModulatedTokens(nn.Module):
    """Flux tokens with per-band Time Modulation.

    token = (W_b [flux, flux_err] + c_b) * gamma_b(t) + beta_b(t), where gamma and beta are
    Fourier series in time whose coefficients are learned per band. Per-band weights are
    applied as one matmul over (one-hot band x inputs) rather than by gathering a weight
    tensor per token, which would materialise (B, L, 2M, C) and dominate training time.
    """

    def __init__(self, cfg: ATATConfig) -> None:
        super().__init__()
        d, m, nb = cfg.d_model, cfg.n_harmonics, cfg.n_bands
        self.n_bands = nb
        self.value = nn.Linear(nb * 2, d)  # rows: band-major (band, [flux, flux_err])
        self.value_bias = nn.Linear(nb, d, bias=False)
        self.gamma = nn.Linear(nb * 2 * m, d, bias=False)
        self.beta = nn.Linear(nb * 2 * m, d, bias=False)
        nn.init.normal_(self.gamma.weight, std=0.02)
        nn.init.normal_(self.beta.weight, std=0.02)
        freqs = 2 * math.pi * torch.arange(1, m + 1, dtype=torch.float32) / cfg.time_period_days
        self.register_buffer("freqs", freqs)
        self.register_buffer("band_ids", torch.arange(nb))

    def forward(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        export_form: bool | str = False,
    ) -> torch.Tensor:
        """(B, L, C) tokens. ``export_form``: True computes :meth:`exported` (gathered bands),
        :data:`DENSE_FORM` computes :meth:`dense` (one-hot bands, no data-dependent shape)."""
        if export_form == DENSE_FORM:
            return self.dense(flux, flux_err, time, band)
        if export_form:
            return self.exported(flux, flux_err, time, band)
        b, length = flux.shape
        onehot = torch.where(band.unsqueeze(-1) == self.band_ids, 1.0, 0.0)  # (B, L, NB)
        values = torch.stack([flux, flux_err], dim=-1)  # (B, L, 2)
        x = self.value((onehot.unsqueeze(-1) * values.unsqueeze(-2)).reshape(b, length, -1))
        x = x + self.value_bias(onehot)  # (B, L, C)
        phase = time.unsqueeze(-1) * self.freqs  # (B, L, M)
        basis = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)  # (B, L, 2M)
        per_band = (onehot.unsqueeze(-1) * basis.unsqueeze(-2)).reshape(
            b, length, -1
        )  # (B, L, NB*2M)
        return x * (1.0 + self.gamma(per_band)) + self.beta(per_band)

    def exported(
        self, flux: torch.Tensor, flux_err: torch.Tensor, time: torch.Tensor, band: torch.Tensor
    ) -> torch.Tensor:
        """Export form of :meth:`forward`, the same tokens: the points of each band are
        gathered (``NonZero`` + ``Gather``) and multiplied by that band's weights alone, then
        scattered back to their places. The one-hot form multiplies every point by every
        band's Fourier weights (n_bands x the work: 192 x 128 multiply-adds per point for six
        bands, more than an attention block's projections).

        Weight slices take their bounds from a tensor's shape (``unit`` = 1): the exporter
        would fold constant slices of parameters into unnamed per-band copies, and the file
        keeps each weight whole under its own name instead, which warm starts read."""
        b, length = flux.shape
        d = self.gamma.weight.shape[0]
        # (N, 4) rows: flux, flux_err, 1 (for the band's offset), time
        points = torch.stack([flux, flux_err, torch.ones_like(flux), time], dim=-1).reshape(-1, 4)
        unit = points.shape[1] // 4
        m2 = 2 * self.freqs.shape[0] * unit  # Fourier terms per band: sin and cos
        bands = band.reshape(-1)
        order, tokens = [], []
        for k in range(self.n_bands):
            rows = torch.nonzero(bands == k).squeeze(1)
            p = points[rows]  # (K, 4)
            w_value = torch.cat(
                [
                    self.value.weight[:, 2 * k * unit : 2 * (k + 1) * unit],
                    self.value_bias.weight[:, k * unit : (k + 1) * unit],
                ],
                dim=1,
            )
            x = F.linear(p[:, :3], w_value, self.value.bias)
            phase = p[:, 3:] * self.freqs
            basis = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)  # (K, 2M)
            columns = slice(k * m2, (k + 1) * m2)
            gamma = F.linear(basis, self.gamma.weight[:, columns], torch.ones_like(self.value.bias))
            beta = F.linear(basis, self.beta.weight[:, columns])
            order.append(rows)
            tokens.append(x * gamma + beta)
        # every point belongs to one band (the model's bands are checked before the call)
        out = torch.zeros(b * length, d, dtype=flux.dtype)
        out = out.index_put((torch.cat(order),), torch.cat(tokens))
        return out.reshape(b, length, d)

    def dense(
        self, flux: torch.Tensor, flux_err: torch.Tensor, time: torch.Tensor, band: torch.Tensor
    ) -> torch.Tensor:
        """Export form of :meth:`forward` for a GPU, the same tokens with no data-dependent
        shape: the one-hot arithmetic of :meth:`forward` (every point times every band's
        weights, zero where the band is not its own: n_bands x the multiply-adds of
        :meth:`exported`, which a GPU does not mind) over (B*L, .) rows, so that each
        projection exports as one ``Gemm`` with its bias fused. :meth:`exported` instead
        gathers each band's points (``NonZero``: an output size known only after the data is
        read), which on CUDA costs a device-to-host synchronisation per band and rules out
        CUDA graphs. Each weight is used whole, under its own name, as in :meth:`exported`."""
        b, length = flux.shape
        onehot = torch.where(band.reshape(-1, 1) == self.band_ids, 1.0, 0.0)  # (N, NB)
        values = torch.stack([flux, flux_err], dim=-1).reshape(-1, 1, 2)  # (N, 1, 2)
        n = onehot.shape[0]
        x = F.linear(
            (onehot.unsqueeze(-1) * values).reshape(n, -1), self.value.weight, self.value.bias
        )
        x = x + F.linear(onehot, self.value_bias.weight)  # (N, C)
        phase = time.reshape(-1, 1) * self.freqs  # (N, M)
        basis = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)  # (N, 2M)
        per_band = (onehot.unsqueeze(-1) * basis.unsqueeze(-2)).reshape(n, -1)  # (N, NB*2M)
        tokens = x * (1.0 + F.linear(per_band, self.gamma.weight)) + F.linear(
            per_band, self.beta.weight
        )
        return tokens.reshape(b, length, -1)


TIE_TOLERANCE = 1e-5  # relative margin above a tied quantile before its step counts


class QuantileFeatureTokens(nn.Module):
    """One token per tabular feature, after a quantile transform stored in the model.

    Each raw value is mapped to its empirical CDF u in [0, 1] by piecewise-linear
    interpolation of the feature's quantile table (fitted on the training set, kept as a
    buffer so the exported graph applies it), then token = (2u - 1) w_f + b_f. NaN values
    get a learned per-feature "missing" token.
    """

    def __init__(self, cfg: ATATConfig) -> None:
        super().__init__()
        f, d = cfg.n_features, cfg.d_model
        # Placeholder tables; `fit_quantiles` sets them from training data.
        self.register_buffer(
            "quantiles", torch.linspace(0, 1, cfg.n_quantiles).repeat(f, 1)
        )  # (F, Q)
        self.weight = nn.Parameter(torch.randn(f, d) * 0.1)
        self.bias = nn.Parameter(torch.randn(f, d) * 0.02)
        self.missing = nn.Parameter(torch.randn(f, d) * 0.02)

    @torch.no_grad()
    def fit_quantiles(self, features: torch.Tensor) -> None:
        """Fit the per-feature quantile tables from training features (N, F), NaN ignored."""
        probs = torch.linspace(0, 1, self.quantiles.shape[1], dtype=torch.float64)
        for j in range(features.shape[1]):
            col = features[:, j].double()
            col = col[torch.isfinite(col)]
            if col.numel() == 0:
                self.quantiles[j] = 0.0
            else:
                self.quantiles[j] = torch.quantile(col, probs).float()

    def forward(self, values: torch.Tensor, export_form: bool | str = False) -> torch.Tensor:
        missing = torch.isnan(values)  # (B, F)
        v = torch.where(missing, torch.zeros_like(values), values).unsqueeze(-1)  # (B, F, 1)
        lo, hi = self.quantiles[:, :-1], self.quantiles[:, 1:]  # (F, Q-1)
        width = hi - lo
        if export_form:
            step = self._exported_steps(v, lo, hi, width)
        else:
            step = self._steps(v, lo, hi, width)
        u = step.mean(dim=-1, keepdim=True)  # (B, F, 1), empirical CDF
        if export_form:
            # The missing token by arithmetic on (B, F, 1) flags, exact as both flags are 0
            # or 1: ONNX Runtime's Where over (B, F, C) costs 4x a Mul or an Add of the same
            # shape (and needs an Expand). Each parameter is used as it is (a combination of
            # two would be folded into one constant, which warm starts could not split).
            flag = torch.where(missing, 1.0, 0.0).unsqueeze(-1)  # (B, F, 1)
            present = 1.0 - flag
            return (
                (2.0 * u - 1.0) * present * self.weight + present * self.bias + flag * self.missing
            )
        tokens = (2.0 * u - 1.0) * self.weight + self.bias  # (B, F, C)
        return torch.where(missing.unsqueeze(-1), self.missing.expand_as(tokens), tokens)

    @staticmethod
    def _steps(
        v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, width: torch.Tensor
    ) -> torch.Tensor:
        """(B, F, Q-1): how far ``v`` is through each segment of its feature's table."""
        # Piecewise-linear CDF; a tied pair of quantiles (width 0) is a step, 1 only above it
        # by more than TIE_TOLERANCE (relative): a value computed in the graph (the galactic
        # latitude of CLIP's metadata tower) that equals a training value must not flip the
        # step on a last-bit difference between torch and ONNX Runtime (ties are common:
        # objects repeat coordinates). (0/1 constants survive float16 conversion.)
        ramp = torch.clamp((v - lo) / torch.where(width > 0, width, 1.0), 0.0, 1.0)
        above = v > hi + TIE_TOLERANCE * torch.abs(hi)
        return torch.where(width > 0, ramp, torch.where(above, 1.0, 0.0))  # (B, F, Q-1)

    @staticmethod
    def _exported_steps(
        v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, width: torch.Tensor
    ) -> torch.Tensor:
        """Export form of :meth:`_steps`, one subtraction, one product and one clip over
        (B, F, Q-1) instead of seven passes: the tables fold to two constants, a start and
        a slope per segment. A tied segment starts at its tie threshold with the largest
        float32 slope, so that clip((v - start) * slope, 0, 1) is 0 up to the threshold
        and 1 above it (any difference of at least 3e-39, i.e. every normal float32)."""
        tie = width <= 0
        largest = torch.finfo(torch.float32).max
        start = torch.where(tie, hi + TIE_TOLERANCE * torch.abs(hi), lo)
        # (a subnormal width would give an infinite slope, and 0 * inf at v = start)
        slope = torch.where(
            tie, largest, torch.clamp(1.0 / torch.where(tie, 1.0, width), max=largest)
        )
        return torch.clamp((v - start) * slope, 0.0, 1.0)


class ATAT(nn.Module):
    def __init__(self, cfg: ATATConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.lc_tokens = TimeModulatedTokens(cfg)
        self.lc_encoder = Encoder(cfg, cfg.lc_layers)
        self.has_tabular = cfg.n_features > 0
        if self.has_tabular:
            self.tab_tokens = QuantileFeatureTokens(cfg)
            self.tab_encoder = Encoder(cfg, cfg.tab_layers)
            self.tab_head = nn.Linear(d, cfg.n_classes)
            self.mix_head = nn.Sequential(
                nn.Linear(2 * d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, cfg.n_classes)
            )
        self.lc_head = nn.Linear(d, cfg.n_classes)

    def encode_light_curve(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        export_form: bool | str = False,
    ) -> torch.Tensor:
        """The light-curve encoder's CLS output (B, d_model)."""
        tokens = self.lc_tokens(flux, flux_err, time, band, export_form)
        return self.lc_encoder(tokens, mask, export_form)

    def encode_tabular(
        self, tabular: torch.Tensor, export_form: bool | str = False
    ) -> torch.Tensor:
        """The tabular encoder's CLS output (B, d_model)."""
        return self.tab_encoder(self.tab_tokens(tabular, export_form), None, export_form)

    def forward_logits(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        tabular: torch.Tensor,
        export_form: bool | str = False,
    ) -> dict[str, torch.Tensor]:
        """Logits of each head, (B, n_classes) each: keys 'lc', 'tab', 'mix'."""
        lc = self.encode_light_curve(flux, flux_err, time, band, mask, export_form)
        out = {"lc": self.lc_head(lc)}
        if self.has_tabular:
            tab = self.encode_tabular(tabular, export_form)
            out["tab"] = self.tab_head(tab)
            out["mix"] = self.mix_head(torch.cat([lc, tab], dim=-1))
        else:
            out["mix"] = out["lc"]
        return out

    def forward_embedding(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        tabular: torch.Tensor,
        export_form: bool | str = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, logits) of the mixed head: the vector the head reads, the light-curve
        and tabular CLS outputs side by side (B, 2 d_model), or the light-curve CLS output
        (B, d_model) for a model without tabular inputs; and the head's logits, the same
        numbers as ``forward_logits(...)['mix']``."""
        lc = self.encode_light_curve(flux, flux_err, time, band, mask, export_form)
        if not self.has_tabular:
            return lc, self.lc_head(lc)
        tab = self.encode_tabular(tabular, export_form)
        embedding = torch.cat([lc, tab], dim=-1)
        return embedding, self.mix_head(embedding)

    def forward(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        tabular: torch.Tensor,
    ) -> torch.Tensor:
        """Class probabilities of the mixed head, (B, n_classes)."""
        logits = self.forward_logits(flux, flux_err, time, band, mask, tabular)["mix"]
        return F.softmax(logits, dim=-1)


# -- the family ----------------------------------------------------------------------------


class ATATFamily(Family):
    """ATAT as a :class:`~astro_classifier.families.base.Family`: supervised, the three heads'
    cross-entropies summed; export form ``forward_embedding`` (the embedding the mixed head
    reads, and its logits), with the class-Gaussian OOD score on that embedding; warm starts
    from an exported file; the render pretraining trains its two encoders."""

    name = "ATAT"
    config_cls = ATATConfig
    heads = ("lc", "tab", "mix")
    onnx_warm_start = True
    render_pretraining = True
    gaussian_ood = True
    fp16 = True

    def build(self, cfg: ATATConfig) -> ATAT:
        return ATAT(cfg)

    def fit(self, model: ATAT, features: torch.Tensor) -> None:
        if model.has_tabular:
            model.tab_tokens.fit_quantiles(features)

    def loss(
        self,
        model: ATAT,
        batch: Batch,
        objective: str,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, float]:
        logits = model.forward_logits(**batch.model_inputs)
        loss, n_heads = multi_head_loss(logits, batch.target, self.heads, batch.class_weight)
        return loss, loss.item() / n_heads

    def probabilities(self, model: ATAT, batch: Batch) -> torch.Tensor:
        return model(**batch.model_inputs)

    def representation(self, model: ATAT, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the mixed head reads: light-curve CLS (+ tabular CLS)."""
        lc = model.encode_light_curve(
            inputs["flux"], inputs["flux_err"], inputs["time"], inputs["band"], inputs["mask"]
        )
        if not model.has_tabular:
            return lc
        return torch.cat([lc, model.encode_tabular(inputs["tabular"])], dim=-1)

    def representation_width(self, model: ATAT) -> int:
        return model.cfg.d_model * (2 if model.has_tabular else 1)

    def export_outputs(
        self, model: ATAT, inputs: dict[str, torch.Tensor], export_form: bool | str
    ) -> ExportOutputs:
        names = ModelInputs.names()
        embedding, logits = model.forward_embedding(
            **{k: inputs[k] for k in names}, export_form=export_form
        )
        return ExportOutputs(embedding, logits)
