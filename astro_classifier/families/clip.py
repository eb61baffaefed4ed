"""Multimodal CLIP (AstroM3 / AstroCLIP style): one encoder per modality, a shared space.

Modalities (``ClipConfig.modalities``, any subset holding ``photometry``):

- ``photometry``: ATAT's light-curve encoder (time-modulated flux tokens + pre-norm
  transformer), its CLS output pooled; the classes of :mod:`astro_classifier.families.atat`
  are reused, not copied.
- ``metadata``: ATAT's quantile feature tokenizer + transformer over the tabular columns
  ``feature_names``. When ``ra`` and ``decl`` are among them, the model replaces both by the
  galactic latitude (degrees) computed in the graph, so serving feeds the raw coordinates.
- ``spectrum``: a 1-D CNN over a fixed wavelength grid (``spectrum_grid``: first, last, number
  of bins, Å, observer frame), channels flux and flux error, each spectrum divided by its own
  RMS flux (NaN = no data, read as 0): the normalisation of
  :func:`astro_classifier.features.spectra.normalise`, repeated in the graph (idempotent). Real
  spectra come through :func:`astro_classifier.features.spectra.model_input` (the one resampling
  and normalisation of training and serving).
- ``image``: the alert's three cutouts (science, template, difference), centred and
  normalised by :mod:`astro_classifier.formats.stamps` (the one decoding of training and
  serving) into (B, 3, ``image_size``, ``image_size``), through the tiny ViT of
  :mod:`astro_classifier.families.image` (``image_patch`` pixel patches, ``image_layers``
  blocks, width ``d_model``).

Each encoder output goes through a projection head (Linear-GELU-Linear) to ``embed_dim`` and is
L2-normalised. Pretraining minimises the symmetric InfoNCE loss of every pair of modalities
present in both objects, each pair with its own learnable logit scale, clamped to
``[1, max_logit_scale]`` (temperature 1 .. 1/max). Modality dropout removes modalities at
random during training (never all of an object's), so any subset embeds and classifies.

Classification: the fused embedding is the L2-normalised mean of the present modalities'
embeddings (presence flags per modality, 1 = present), and a linear head gives the logits.
Attention is dense and deterministic: the same input always gives the same output.

:class:`ClipFamily` is CLIP's :class:`~astro_classifier.families.base.Family`: contrastive or
classification objective, a head on frozen towers, the extra graph inputs ``spectrum``,
``image`` and ``has_<modality>``, and the export form (fused embedding, logits,
``embedding_<modality>`` per tower).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from astro_classifier.families.atat import (
    ATATConfig,
    Encoder,
    QuantileFeatureTokens,
    TimeModulatedTokens,
)
from astro_classifier.families.base import (
    CLASSIFY,
    CONTRASTIVE,
    PRESENCE_PREFIX,
    Batch,
    ExportOutputs,
    Family,
    input_spec,
)
from astro_classifier.families.image import ImageEncoder, ImageEncoderConfig
from astro_classifier.features.preprocess import ModelInputs

MODALITIES = ("photometry", "metadata", "spectrum", "image")
# Galactic north pole (J2000): RA 192.85948 deg, Dec 27.12825 deg.
_NGP_RA, _NGP_DEC = math.radians(192.85948), math.radians(27.12825)
COORDINATES = ("ra", "decl")


@dataclass(frozen=True)
class ClipConfig:
    n_classes: int = 0  # 0: pretraining only, no classifier head
    n_bands: int = 6
    feature_names: tuple[str, ...] = ()  # tabular input columns, in order
    modalities: tuple[str, ...] = ("photometry", "metadata")
    d_model: int = 64
    n_heads: int = 4
    lc_layers: int = 3
    tab_layers: int = 2
    ff_mult: int = 2
    n_harmonics: int = 16
    time_period_days: float = 1500.0
    n_quantiles: int = 64
    dropout: float = 0.1
    embed_dim: int = 64  # the shared space
    spectrum_grid: tuple[float, float, int] = (3500.0, 9500.0, 256)  # Angstrom
    spectrum_channels: int = 32
    spectrum_layers: int = 3
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0  # temperature >= 0.01
    modality_dropout: float = 0.2
    image_size: int = 63  # core.cutouts.STAMP_SIZE
    image_patch: int = 7
    image_layers: int = 2

    def __post_init__(self) -> None:
        for name in ("feature_names", "modalities", "spectrum_grid"):  # YAML gives lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or "photometry" not in self.modalities:
            raise ValueError(
                f"modalities must hold 'photometry' and only {list(MODALITIES)}, got "
                f"{list(self.modalities)}"
            )
        if "image" in self.modalities:
            self.image_encoder()  # a patch size that does not divide the stamp is refused here
        if "metadata" in self.modalities and not self.feature_names:
            raise ValueError("the metadata modality needs tabular features (feature_names)")

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(itertools.combinations(self.modalities, 2))

    @property
    def metadata_columns(self) -> list[str]:
        """Columns the metadata tower tokenises: inputs, with ra/decl replaced by gal_b."""
        names = list(self.feature_names)
        if all(c in names for c in COORDINATES):
            names = [n for n in names if n not in COORDINATES] + ["gal_b"]
        return names

    def image_encoder(self) -> ImageEncoderConfig:
        return ImageEncoderConfig(
            in_channels=3,
            image_size=self.image_size,
            patch_size=self.image_patch,
            d_model=self.d_model,
            n_layers=self.image_layers,
            n_heads=self.n_heads,
            ff_mult=self.ff_mult,
            dropout=self.dropout,
        )

    def atat(self, n_features: int) -> ATATConfig:
        return ATATConfig(
            n_classes=max(self.n_classes, 1),
            n_bands=self.n_bands,
            n_features=n_features,
            d_model=self.d_model,
            n_heads=self.n_heads,
            lc_layers=self.lc_layers,
            tab_layers=self.tab_layers,
            ff_mult=self.ff_mult,
            n_harmonics=self.n_harmonics,
            time_period_days=self.time_period_days,
            n_quantiles=self.n_quantiles,
            dropout=self.dropout,
        )


CLIP_TINY = dict(
    d_model=16,
    n_heads=2,
    lc_layers=1,
    tab_layers=1,
    n_harmonics=4,
    n_quantiles=16,
    embed_dim=16,
    spectrum_grid=(3500.0, 9500.0, 64),
    spectrum_channels=8,
    spectrum_layers=2,
    image_patch=9,
    image_layers=1,
)


def galactic_latitude(ra_deg: torch.Tensor, dec_deg: torch.Tensor) -> torch.Tensor:
    """Galactic latitude (degrees) of J2000 coordinates (degrees); NaN stays NaN."""
    ra, dec = ra_deg * (math.pi / 180.0), dec_deg * (math.pi / 180.0)
    sin_b = torch.sin(dec) * math.sin(_NGP_DEC) + torch.cos(dec) * math.cos(_NGP_DEC) * torch.cos(
        ra - _NGP_RA
    )
    return torch.asin(torch.clamp(sin_b, -1.0, 1.0)) * (180.0 / math.pi)


class MetadataColumns(nn.Module):
    """Tabular inputs -> the metadata tower's columns (ra, decl -> galactic latitude)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        names = list(cfg.feature_names)
        self.coords = all(c in names for c in COORDINATES)
        keep = [i for i, n in enumerate(names) if not (self.coords and n in COORDINATES)]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.int64), persistent=False)
        self.ra = names.index("ra") if self.coords else -1
        self.dec = names.index("decl") if self.coords else -1

    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        out = tabular.index_select(1, self.keep)
        if self.coords:
            b = galactic_latitude(tabular[:, self.ra], tabular[:, self.dec])
            out = torch.cat([out, b.unsqueeze(1)], dim=1)
        return out


class SpectrumEncoder(nn.Module):
    """1-D CNN over (B, 2, G) flux and error on the model's wavelength grid."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        c = cfg.spectrum_channels
        layers: list[nn.Module] = []
        channels = 2
        for _ in range(cfg.spectrum_layers):
            layers += [nn.Conv1d(channels, c, 5, padding=2), nn.GELU(), nn.MaxPool1d(2)]
            channels = c
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(c, cfg.d_model)

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(spectrum), torch.zeros_like(spectrum), spectrum)
        rms = torch.sqrt((x[:, :1] ** 2).mean(dim=2, keepdim=True))  # flux RMS (B,1,1)
        x = x / torch.where(rms > 0, rms, torch.ones_like(rms))  # = data.spectra.normalise
        return self.out(self.conv(x).mean(dim=2))


def projection(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))


class CLIP(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = tuple(cfg.modalities)
        columns = cfg.metadata_columns
        atat = cfg.atat(len(columns))
        self.lc_tokens = TimeModulatedTokens(atat)
        self.lc_encoder = Encoder(atat, cfg.lc_layers)
        self.proj = nn.ModuleDict({"photometry": projection(cfg.d_model, cfg.embed_dim)})
        self.has_tabular = "metadata" in cfg.modalities
        if self.has_tabular:
            self.meta_columns = MetadataColumns(cfg)
            self.tab_tokens = QuantileFeatureTokens(atat)
            self.tab_encoder = Encoder(atat, cfg.tab_layers)
            self.proj["metadata"] = projection(cfg.d_model, cfg.embed_dim)
        if "spectrum" in cfg.modalities:
            self.spectrum_encoder = SpectrumEncoder(cfg)
            self.proj["spectrum"] = projection(cfg.d_model, cfg.embed_dim)
        if "image" in cfg.modalities:
            self.image_encoder = ImageEncoder(cfg.image_encoder())
            self.proj["image"] = projection(cfg.d_model, cfg.embed_dim)
        n_pairs = len(cfg.pairs)
        self.logit_scale = nn.Parameter(
            torch.full((max(n_pairs, 1),), math.log(1.0 / cfg.init_temperature))
        )
        self.head = nn.Linear(cfg.embed_dim, cfg.n_classes) if cfg.n_classes > 0 else None

    # -- embeddings ----------------------------------------------------------------------

    def embed_photometry(
        self, flux, flux_err, time, band, mask, export_form: bool = False
    ) -> torch.Tensor:
        tokens = self.lc_tokens(flux, flux_err, time, band, export_form)
        h = self.lc_encoder(tokens, mask, export_form)
        return F.normalize(self.proj["photometry"](h), dim=-1)

    def embed_metadata(self, tabular: torch.Tensor, export_form: bool = False) -> torch.Tensor:
        tokens = self.tab_tokens(self.meta_columns(tabular), export_form)
        h = self.tab_encoder(tokens, None, export_form)
        return F.normalize(self.proj["metadata"](h), dim=-1)

    def embed_spectrum(self, spectrum: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj["spectrum"](self.spectrum_encoder(spectrum)), dim=-1)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj["image"](self.image_encoder(image)), dim=-1)

    def embeddings(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        tabular: torch.Tensor,
        spectrum: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        export_form: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Per-modality L2-normalised embeddings (B, embed_dim) of every tower (every row is
        computed, zeros where an input is absent; presence only matters to the loss and the
        fusion). ``export_form``: the transformer towers compute their export forms
        (:mod:`astro_classifier.families.atat`)."""
        out = {"photometry": self.embed_photometry(flux, flux_err, time, band, mask, export_form)}
        if self.has_tabular:
            out["metadata"] = self.embed_metadata(tabular, export_form)
        if "spectrum" in self.modalities:
            if spectrum is None:
                spectrum = flux.new_zeros((flux.shape[0], 2, self.cfg.spectrum_grid[2]))
            out["spectrum"] = self.embed_spectrum(spectrum)
        if "image" in self.modalities:
            if image is None:
                size = self.cfg.image_size
                image = flux.new_zeros((flux.shape[0], 3, size, size))
            out["image"] = self.embed_image(image)
        return out

    def fuse(self, emb: dict[str, torch.Tensor], presence: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised mean of the present modalities' embeddings (B, embed_dim)."""
        total = torch.zeros_like(emb["photometry"])
        count = torch.zeros_like(emb["photometry"][:, :1])
        for name, z in emb.items():
            p = presence[name].to(z.dtype).unsqueeze(1)
            total = total + p * z
            count = count + p
        return F.normalize(total / torch.clamp(count, min=1.0), dim=-1)

    # -- training ------------------------------------------------------------------------

    def scales(self) -> torch.Tensor:
        return torch.clamp(self.logit_scale.exp(), 1.0, self.cfg.max_logit_scale)

    def contrastive_loss(
        self, emb: dict[str, torch.Tensor], presence: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over pairs of the symmetric InfoNCE loss on the objects holding both."""
        losses, parts = [], {}
        scales = self.scales()
        for k, (a, b) in enumerate(self.cfg.pairs):
            if a not in emb or b not in emb:
                continue
            both = presence[a].bool() & presence[b].bool()
            if int(both.sum()) < 2:
                continue
            za, zb = emb[a][both], emb[b][both]
            logits = scales[k] * za @ zb.T
            target = torch.arange(len(za), device=za.device)
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            losses.append(loss)
            parts[f"{a}-{b}"] = float(loss.detach())
        if not losses:
            return emb["photometry"].sum() * 0.0, parts
        return torch.stack(losses).mean(), parts

    def drop_modalities(
        self, presence: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Modality dropout: each present modality removed with probability
        ``cfg.modality_dropout``; an object that would lose all keeps its photometry."""
        p = self.cfg.modality_dropout
        if p <= 0:
            return presence
        out = {}
        for name, flag in presence.items():
            keep = torch.rand(flag.shape, generator=generator, device=flag.device) >= p
            out[name] = flag.bool() & keep
        alive = torch.stack(list(out.values())).any(dim=0)
        out["photometry"] = out["photometry"] | (~alive & presence["photometry"].bool())
        return out

    def forward_logits(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        tabular: torch.Tensor,
        presence: dict[str, torch.Tensor] | None = None,
        spectrum: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{'mix': logits of the head on the fused embedding} (training's loss heads)."""
        if self.head is None:
            raise ValueError("this CLIP model has no classifier head (n_classes 0): fine-tune it")
        emb = self.embeddings(flux, flux_err, time, band, mask, tabular, spectrum, image)
        presence = presence or default_presence(self, tabular)
        return {"mix": self.head(self.fuse(emb, presence))}

    def forward(self, flux, flux_err, time, band, mask, tabular) -> torch.Tensor:
        """Class probabilities (photometry + metadata where it has finite values)."""
        logits = self.forward_logits(flux, flux_err, time, band, mask, tabular)["mix"]
        return F.softmax(logits, dim=-1)


def default_presence(model: CLIP, tabular: torch.Tensor) -> dict[str, torch.Tensor]:
    """Photometry; metadata where any value is finite; no spectrum, no image (callers that
    have them set those flags)."""
    n = tabular.shape[0]
    presence = {"photometry": torch.ones(n, dtype=torch.bool, device=tabular.device)}
    if model.has_tabular:
        presence["metadata"] = torch.isfinite(tabular).any(dim=1)
    if "spectrum" in model.modalities:
        presence["spectrum"] = torch.zeros(n, dtype=torch.bool, device=tabular.device)
    if "image" in model.modalities:
        presence["image"] = torch.zeros(n, dtype=torch.bool, device=tabular.device)
    return presence


@torch.no_grad()
def fit_clip(model: CLIP, features: torch.Tensor) -> None:
    """Quantile tables of the metadata tower from training tabular values (N, F)."""
    if model.has_tabular:
        model.tab_tokens.fit_quantiles(model.meta_columns(features.float()))


# -- the family ----------------------------------------------------------------------------


def presence(model: CLIP, batch: Batch) -> dict[str, torch.Tensor]:
    """:func:`default_presence`, with each extra data input present where the object has it."""
    flags = default_presence(model, batch.inputs["tabular"])
    flags.update(batch.available)
    return flags


class ClipFamily(Family):
    """CLIP as a :class:`~astro_classifier.families.base.Family`: contrastive pretraining
    (InfoNCE over the modality pairs) or classification (cross-entropy of the head on the fused
    embedding), with modality dropout in training steps; a head can be trained on frozen towers
    of a pretrained run. Export form: the fused embedding, the head's logits (none for a
    pretraining), and ``embedding_<modality>`` per tower; extra graph inputs: ``spectrum``
    (B, 2, G) and ``image`` (B, 3, S, S) for those towers, then ``has_<modality>`` (B,) bool
    per modality. Every output must match torch within 1e-5."""

    name = "CLIP"
    config_cls = ClipConfig
    data_fields = ("n_classes", "n_bands", "feature_names")
    objectives = (CLASSIFY, CONTRASTIVE)
    freezable = True
    parity_tolerance = 1e-5

    def build(self, cfg: ClipConfig) -> CLIP:
        return CLIP(cfg)

    def fit(self, model: CLIP, features: torch.Tensor) -> None:
        fit_clip(model, features)

    def start_from(
        self,
        pretrained: CLIP,
        n_classes: int,
        n_bands: int,
        n_features: int,
        feature_names: tuple[str, ...],
    ) -> CLIP:
        """The pretrained towers, with a fresh head for ``n_classes`` when it has another."""
        cfg = pretrained.cfg
        if list(cfg.feature_names) != list(feature_names) or cfg.n_bands != n_bands:
            raise ValueError(
                f"pretrained on features {list(cfg.feature_names)} and {cfg.n_bands} bands; "
                f"this config has {list(feature_names)} and {n_bands} bands"
            )
        if cfg.n_classes == n_classes:
            return pretrained
        model = CLIP(dataclasses.replace(cfg, n_classes=n_classes))
        missing, unexpected = model.load_state_dict(pretrained.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
        return model

    def classifies(self, model: CLIP) -> bool:
        return model.head is not None

    def trainable(self, model: CLIP, freeze: bool) -> list[nn.Parameter]:
        if freeze:
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("head.")
        return [p for p in model.parameters() if p.requires_grad]

    def train_mode(self, model: CLIP, freeze: bool) -> None:
        model.train()
        if freeze:  # frozen towers: no dropout either
            for name, module in model.named_children():
                if name != "head":
                    module.eval()

    def loss(
        self,
        model: CLIP,
        batch: Batch,
        objective: str,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, float]:
        flags = presence(model, batch)
        if generator is not None:
            flags = model.drop_modalities(flags, generator)
        if objective == CONTRASTIVE:
            loss, _ = model.contrastive_loss(model.embeddings(**batch.inputs), flags)
        else:
            logits = model.forward_logits(**batch.inputs, presence=flags)["mix"]
            loss = F.cross_entropy(logits, batch.target, weight=batch.class_weight)
        return loss, loss.item()

    def probabilities(self, model: CLIP, batch: Batch) -> torch.Tensor:
        logits = model.forward_logits(**batch.inputs, presence=presence(model, batch))["mix"]
        return torch.softmax(logits, dim=-1)

    def embed(self, model: CLIP, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-modality embeddings and the fused one (``fused``)."""
        emb = model.embeddings(**batch.inputs)
        emb["fused"] = model.fuse(emb, presence(model, batch))
        return emb

    def history_extras(self, model: CLIP, objective: str) -> dict[str, Any]:
        if objective != CONTRASTIVE:
            return {}
        return {"temperatures": (1.0 / model.scales().detach().cpu()).tolist()}

    def export_outputs(
        self, model: CLIP, inputs: dict[str, torch.Tensor], export_form: bool
    ) -> ExportOutputs:
        emb = model.embeddings(
            *(inputs[k] for k in ModelInputs.names()),
            spectrum=inputs.get("spectrum"),
            image=inputs.get("image"),
            export_form=export_form,
        )
        flags = {m: inputs[PRESENCE_PREFIX + m] for m in model.modalities}
        fused = model.fuse(emb, flags)
        logits = model.head(fused) if model.head is not None else None
        return ExportOutputs(fused, logits, {f"embedding_{m}": emb[m] for m in model.modalities})

    def extra_output_shapes(self, model: CLIP) -> dict[str, list[str | int]]:
        names = ["embedding"] + [f"embedding_{m}" for m in model.modalities]
        return {name: ["batch", model.cfg.embed_dim] for name in names}

    def extra_inputs(self, model: CLIP) -> list[dict[str, Any]]:
        cfg = model.cfg
        specs = []
        if "spectrum" in model.modalities:
            specs.append(input_spec("spectrum", "float32", ["batch", 2, int(cfg.spectrum_grid[2])]))
        if "image" in model.modalities:
            size = cfg.image_size
            specs.append(input_spec("image", "float32", ["batch", 3, size, size]))
        return specs + [
            input_spec(PRESENCE_PREFIX + m, "bool", ["batch"]) for m in model.modalities
        ]

    def metadata_extras(self, model: CLIP) -> dict[str, Any]:
        modalities = list(model.modalities)
        return {
            "modalities": modalities,
            "required_modalities": ["photometry"],
            "spectrum_grid": list(model.cfg.spectrum_grid) if "spectrum" in modalities else None,
            "image_size": model.cfg.image_size if "image" in modalities else None,
            "embedding_dim": model.cfg.embed_dim,
        }

    def calibration_note(self, model: CLIP, fed: list[str]) -> str:
        towers = [m for m in model.modalities if m in ("photometry", "metadata")]
        return ", " + " + ".join(towers + [{"image": "images"}.get(f, f) for f in fed])
