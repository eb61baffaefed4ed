"""Leave-one-source-out training configs: the shipped config with one real source left out.

A model trained this way has never seen any object of the held-out source, so its recall
there is a cross-source number (the shortcut meter's headline, ``shortcut_meter.py --loso``).
One config per real source of the given config is written (the main, simulated set is always
kept), with a shorter schedule unless ``--epochs`` says otherwise.

Usage::

    python -m benchmarks.loso_configs [--config configs/atat_ztf.yaml] [--out runs/loso] \
        [--only osc-sne manytde] [--epochs 6]
    # then, per written config:
    astroclf train runs/loso/<source>.yaml -o runs/loso/<source>
    astroclf export runs/loso/<source> -o runs/loso/<source>/model.onnx
    python -m benchmarks.shortcut_meter --model atat-ztf \
        --loso <source>=runs/loso/<source>/model.onnx ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# shortcut_meter.py source name -> a path fragment of its entry in the config
SOURCE_PATHS = {
    "ztf-bts-snia": "lightcurves/ztf-bts-snia",
    "ztf-bts-antares": "lightcurves/ztf-bts-antares",
    "osc-sne": "multimodal/osc-sne",
    "alerce-examples": "lightcurves/alerce-examples",
    "slsne": "lightcurves/slsne",
    "manytde": "lightcurves/manytde",
    "tdss-quasars": "lightcurves/tdss-quasars",
    "eros1": "lightcurves/eros1",
}


def loso_config(doc: dict, source: str, epochs: int | None) -> dict | None:
    """``doc`` without the extra source ``source`` (None when the config has no such source)."""
    fragment = SOURCE_PATHS[source]
    extra = doc["data"].get("extra_sources", [])
    kept = [entry for entry in extra if fragment not in entry["path"]]
    if len(kept) == len(extra):
        return None
    out = yaml.safe_load(yaml.safe_dump(doc, sort_keys=False))  # a deep copy
    out["data"]["extra_sources"] = kept
    if epochs is not None:
        out["training"]["epochs"] = epochs
    out["export"]["name"] = f"{doc['export']['name']}-without-{source}"
    out["export"]["description"] = f"{doc['export'].get('description', '')} (without {source})"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "configs" / "atat_ztf.yaml")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "runs" / "loso")
    parser.add_argument("--only", nargs="+", choices=sorted(SOURCE_PATHS), default=None)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each run")
    args = parser.parse_args(argv)
    doc = yaml.safe_load(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for source in args.only or SOURCE_PATHS:
        config = loso_config(doc, source, args.epochs)
        if config is None:
            print(f"{source}: not a source of {args.config}, skipped", file=sys.stderr)
            continue
        path = args.out / f"{source}.yaml"
        path.write_text(
            f"# {args.config} without {source} (benchmarks/loso_configs.py)\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
