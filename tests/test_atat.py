"""The ATAT torch model: registry, probabilities, padding invariance, NaN and quantile tables."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from astro_classifier.families.atat import ATAT, ATATConfig  # noqa: E402
from astro_classifier.families.registry import (  # noqa: E402
    ATAT_FAMILY,
    ModelEntry,
    create_model,
    list_models,
    register,
)

N_CLASSES, N_BANDS, N_FEATURES = 5, 3, 7


def _tiny(n_features: int = N_FEATURES, seed: int = 0) -> ATAT:
    torch.manual_seed(seed)
    model = create_model("atat_tiny", n_classes=N_CLASSES, n_bands=N_BANDS, n_features=n_features)
    return model.eval()


def _inputs(
    batch: int = 4, length: int = 9, n_features: int = N_FEATURES, seed: int = 1
) -> dict[str, torch.Tensor]:
    """Random inputs in the ModelInputs layout; every curve has 3..length real points."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = torch.arange(length)[None, :] < lengths[:, None]
    time = torch.cumsum(torch.rand(batch, length, generator=g) * 5, dim=1) - 10
    inputs = {
        "flux": torch.randn(batch, length, generator=g) * 2,
        "flux_err": torch.rand(batch, length, generator=g),
        "time": time,
        "band": torch.randint(0, N_BANDS, (batch, length), generator=g),
    }
    # Padding as preprocessing writes it: zeros and mask False.
    inputs = {k: torch.where(mask, v, torch.zeros_like(v)) for k, v in inputs.items()}
    inputs["mask"] = mask
    inputs["tabular"] = torch.randn(batch, n_features, generator=g) * 3
    return inputs


def _pad(inputs: dict[str, torch.Tensor], extra: int, seed: int = 2) -> dict[str, torch.Tensor]:
    """Append ``extra`` masked positions holding arbitrary (finite) values."""
    g = torch.Generator().manual_seed(seed)
    b = inputs["flux"].shape[0]
    junk = {
        "flux": torch.randn(b, extra, generator=g) * 100,
        "flux_err": torch.rand(b, extra, generator=g) * 50,
        "time": torch.rand(b, extra, generator=g) * 3000 - 1000,
        "band": torch.randint(0, N_BANDS, (b, extra), generator=g),
        "mask": torch.zeros(b, extra, dtype=torch.bool),
    }
    out = {k: torch.cat([inputs[k], junk[k]], dim=1) for k in junk}
    out["tabular"] = inputs["tabular"]
    return out


# -- registry ----------------------------------------------------------------------------


def test_registry_lists_the_atat_models() -> None:
    assert {"atat", "atat_tiny"} <= set(list_models())
    assert list_models() == sorted(list_models())


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(KeyError, match="unknown model 'no_such_model'"):
        create_model("no_such_model", n_classes=2, n_bands=1, n_features=0)


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(ModelEntry("atat", ATAT_FAMILY))
    assert "atat" in list_models()


def test_tiny_defaults_and_overrides() -> None:
    model = create_model("atat_tiny", n_classes=3, n_bands=2, n_features=4, d_model=8)
    assert isinstance(model, ATAT)
    assert model.cfg == ATATConfig(
        n_classes=3, n_bands=2, n_features=4, d_model=8, n_heads=2, lc_layers=1,
        tab_layers=1, n_harmonics=4, n_quantiles=16,
    )  # fmt: skip
    full = create_model("atat", n_classes=3, n_bands=2, n_features=4)
    assert full.cfg.d_model == 64 and full.cfg.lc_layers == 3


# -- forward -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_features", [N_FEATURES, 0])
def test_output_rows_are_probabilities(n_features: int) -> None:
    model = _tiny(n_features)
    with torch.no_grad():
        proba = model(**_inputs(n_features=n_features))
    assert proba.shape == (4, N_CLASSES) and proba.dtype == torch.float32
    assert (proba >= 0).all()
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(4), atol=1e-6, rtol=0)
    logits = model.forward_logits(**_inputs(n_features=n_features))
    assert set(logits) == ({"lc", "tab", "mix"} if n_features else {"lc", "mix"})


@pytest.mark.parametrize("n_features", [N_FEATURES, 0])
def test_padding_does_not_change_probabilities(n_features: int) -> None:
    model = _tiny(n_features)
    inputs = _inputs(n_features=n_features)
    with torch.no_grad():
        base = model(**inputs)
        for extra in (1, 13):
            padded = model(**_pad(inputs, extra))
            torch.testing.assert_close(padded, base, atol=1e-5, rtol=0)


def test_values_at_masked_positions_do_not_matter() -> None:
    model = _tiny()
    inputs = _inputs()
    scrambled = dict(inputs)
    pad = ~inputs["mask"]
    assert pad.any()
    scrambled["flux"] = torch.where(pad, torch.full_like(inputs["flux"], 123.0), inputs["flux"])
    scrambled["time"] = torch.where(pad, torch.full_like(inputs["time"], -777.0), inputs["time"])
    scrambled["band"] = torch.where(pad, torch.full_like(inputs["band"], 2), inputs["band"])
    with torch.no_grad():
        torch.testing.assert_close(model(**scrambled), model(**inputs), atol=1e-5, rtol=0)


def test_eval_mode_is_deterministic_and_batch_independent() -> None:
    model = _tiny()
    inputs = _inputs()
    with torch.no_grad():
        a = model(**inputs)
        b = model(**inputs)
        one = model(**{k: v[1:2] for k, v in inputs.items()})
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(one[0], a[1], atol=1e-5, rtol=0)


def test_nan_in_tabular_gives_finite_probabilities() -> None:
    model = _tiny()
    inputs = _inputs()
    inputs["tabular"][0, 2] = float("nan")
    inputs["tabular"][1] = float("nan")  # every feature missing
    with torch.no_grad():
        proba = model(**inputs)
    assert torch.isfinite(proba).all()
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(4), atol=1e-6, rtol=0)
    # The missing token is used: a NaN is not read as some value.
    inputs["tabular"][0, 2] = 0.0
    with torch.no_grad():
        assert not torch.allclose(model(**inputs)[0], proba[0])


# -- quantile feature tokens -------------------------------------------------------------


def _unit_tokens(model: ATAT) -> None:
    """Make every token (2u - 1) in each channel, so tokens expose the CDF value u."""
    with torch.no_grad():
        model.tab_tokens.weight.fill_(1.0)
        model.tab_tokens.bias.zero_()


def test_fit_quantiles_maps_the_training_median_to_the_middle() -> None:
    model = _tiny(n_features=3)
    _unit_tokens(model)
    g = torch.Generator().manual_seed(0)
    train = torch.stack(
        [
            torch.randn(2001, generator=g) * 5 + 40,  # normal
            torch.exp(torch.randn(2001, generator=g) * 2) * 1e5,  # log-normal, huge values
            torch.rand(2001, generator=g) - 3,  # uniform
        ],
        dim=1,
    )
    train[::7, 0] = float("nan")  # NaN is ignored when fitting
    model.tab_tokens.fit_quantiles(train)
    table = model.tab_tokens.quantiles
    assert torch.isfinite(table).all()
    assert (table[:, 1:] >= table[:, :-1]).all()  # monotone per feature
    median = torch.nanmedian(train, dim=0).values
    lowest = torch.stack([c[torch.isfinite(c)].min() for c in train.T])
    highest = torch.stack([c[torch.isfinite(c)].max() for c in train.T])
    with torch.no_grad():
        tokens = model.tab_tokens(torch.stack([median, lowest, highest]))  # (3, F, C)
    u = (tokens[..., 0] + 1) / 2  # (3, F)
    torch.testing.assert_close(u[0], torch.full((3,), 0.5), atol=0.02, rtol=0)
    torch.testing.assert_close(u[1], torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(u[2], torch.ones(3), atol=1e-6, rtol=0)


def test_fit_quantiles_with_an_all_nan_feature() -> None:
    model = _tiny(n_features=2)
    train = torch.stack([torch.linspace(0, 1, 50), torch.full((50,), float("nan"))], dim=1)
    model.tab_tokens.fit_quantiles(train)
    assert (model.tab_tokens.quantiles[1] == 0).all()
    inputs = _inputs(n_features=2)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs)).all()


@pytest.mark.parametrize("n_features", [N_FEATURES, 0])
def test_last_block_from_cls_alone_equals_every_row(n_features: int) -> None:
    """The encoders compute only the CLS row of their last block; every row through every
    block (then CLS) gives the same output, in training mode too (dropout off)."""
    from astro_classifier.families.atat import MASKED_SCORE

    model = _tiny(n_features)
    inputs = _inputs(batch=6, length=11, n_features=n_features)

    def every_row(encoder, tokens: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = torch.cat([encoder.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        bias = None
        if keep is not None:
            keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
            bias = torch.where(keep, 0.0, MASKED_SCORE)[:, None, None, :]
        for block in encoder.blocks:
            x = block(x, bias, keep)
        assert x.shape[1] == tokens.shape[1] + 1  # really every row
        return encoder.norm(x[:, 0])

    with torch.no_grad():
        tokens = model.lc_tokens(*(inputs[k] for k in ("flux", "flux_err", "time", "band")))
        torch.testing.assert_close(
            model.lc_encoder(tokens, inputs["mask"]),
            every_row(model.lc_encoder, tokens, inputs["mask"]),
            atol=1e-5,
            rtol=0,
        )
        if n_features:
            tab = model.tab_tokens(inputs["tabular"])
            torch.testing.assert_close(
                model.tab_encoder(tab, None),
                every_row(model.tab_encoder, tab, None),
                atol=1e-5,
                rtol=0,
            )


@pytest.mark.parametrize("n_features", [N_FEATURES, 0])
def test_export_forms_equal_the_training_forms(n_features: int) -> None:
    """With ``export_form=True`` the model runs its export forms (rows as Gemm, the
    last block scored in the input space, the folded feature tokenizer, the missing token
    by arithmetic): same outputs."""
    model = _tiny(n_features)
    if n_features:
        g = torch.Generator().manual_seed(3)
        model.tab_tokens.fit_quantiles(torch.randn(200, n_features, generator=g).round())
    inputs = _inputs(batch=6, length=11, n_features=n_features)
    if n_features:  # missing features take the missing token in both forms
        inputs["tabular"][0, 2] = float("nan")
        inputs["tabular"][1] = float("nan")
    with torch.no_grad():
        expected = model.forward_logits(**inputs)
        exported = model.forward_logits(**inputs, export_form=True)
    for head in expected:
        torch.testing.assert_close(exported[head], expected[head], atol=2e-5, rtol=0)


def test_last_block_export_form_for_several_queries() -> None:
    """The input-space scoring of a last block holds for any number of query rows."""
    from astro_classifier.families.atat import MASKED_SCORE

    attn = _tiny().lc_encoder.blocks[0].attn
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 8, attn.proj.in_features, generator=g)
    keep = torch.ones(5, 8, dtype=torch.bool)
    keep[1:, 5:] = False
    bias = torch.where(keep, 0.0, MASKED_SCORE)[:, None, None, :]
    with torch.no_grad():
        for n in (1, 3):
            torch.testing.assert_close(
                attn.exported_few_queries(x, keep, n), attn(x, bias, n_queries=n), atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                attn.exported_few_queries(x, None, n), attn(x, None, n_queries=n), atol=1e-5, rtol=0
            )


def test_feature_tokenizer_export_form_on_ties_edges_and_infinities() -> None:
    """The folded tokenizer (start, slope, clip) gives the training form's steps exactly
    where it matters: at tied quantiles (0 up to the tie threshold, 1 above), at the table
    edges, beyond them, at +-inf, and for a subnormal segment width."""
    from astro_classifier.families.atat import TIE_TOLERANCE, QuantileFeatureTokens

    q = torch.tensor(
        [
            [0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 1e8],
            [-5.0, -1.0, -1.0, -1.0, 0.5, 0.5, 0.5, 0.5],
            [0.0, 1e-40, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ]
    )
    lo, hi = q[:, :-1], q[:, 1:]
    width = hi - lo
    tie_threshold = 2.0 + TIE_TOLERANCE * 2.0
    probes = [
        0.0,
        1e-30,
        2.0,
        tie_threshold,
        torch.nextafter(torch.tensor(tie_threshold), torch.tensor(9.0)).item(),
    ]
    probes += [-1.0, -1.0 + 1e-6, 0.5, 0.5000001, 1e8, 2e8, -1e9, 1.5, float("inf"), float("-inf")]
    v = torch.tensor(probes).reshape(-1, 1, 1).expand(-1, 3, 1)
    training = QuantileFeatureTokens._steps(v, lo, hi, width)
    exported = QuantileFeatureTokens._exported_steps(v, lo, hi, width)
    torch.testing.assert_close(exported, training, atol=1e-6, rtol=0)
    # the tie at 2.0 steps exactly at its threshold
    assert training[3, 0, 4] == 0 and training[4, 0, 4] == 1
