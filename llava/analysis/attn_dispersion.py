"""Attention dispersion: how concentrated the [CLS] attention is next to an early LLM layer's last-token attention.

    python -m llava.analysis.attn_dispersion --model-path ./checkpoints/llava-v1.5-7b \\
        --question-file ./playground/data/analysis/llava_v1_5_mix1k.jsonl \\
        --image-folder ./playground/data/train --output-folder ./playground/data/analysis/attn_dispersion

Two attention vectors per sample: ``cls``, the vision tower's head-mean [CLS] attention over the patches,
and ``last``, the head-mean prefill attention of the last prompt token to the visual tokens in LLM layer
``--layer`` (0-based; upstream used layer 1, the second). Outputs in ``--output-folder``:

* ``CDF.png``: each vector sorted in descending order, divided by its sum and accumulated, averaged over
  samples, against the proportion of tokens. Upstream put the share of the top k+1 tokens at k/n; here
  it is at (k+1)/n, and the curve starts at (0, 0).
* ``cls_attn_dist.png`` / ``last_attn_dist.png``: histograms of every raw value divided by the global
  maximum, with the natural log of each bin's proportion on y and ticks labelled with the proportion they
  stand for (upstream labelled ``5 + ln p`` = 0..4 as 10⁻⁵..10⁻¹, which it is not).
* ``attn_dispersion.json``: the curves, the histogram counts and bin edges, and the skipped samples.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from llava.analysis.collect import Run, add_common_args, iter_sample_attentions, load_model, report, run_header
from llava.analysis.plotting import save_cdf, save_log_histogram, to_list, write_json

LABELS = {"cls": "[CLS] attn", "last": "last attn"}
TITLES = {"cls": "[CLS] Attention Distribution", "last": "Last Attention Distribution"}


def sorted_shares(v: torch.Tensor) -> torch.Tensor:
    """(n,) attention → (n,) shares of the total, largest first."""
    return v.sort(descending=True).values / v.sum()


def cdf_curve(mean_shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean sorted shares (n,) → token proportion % (n+1,) and cumulative attention % (n+1,), from (0, 0)."""
    n = len(mean_shares)
    return np.arange(n + 1) / n * 100, np.concatenate([[0.0], np.cumsum(mean_shares)]) * 100


def normalized_histogram(values: np.ndarray, bins: int) -> dict:
    """Values ÷ their maximum, binned over [min, max] as ``np.histogram`` does; proportion = count / total."""
    top = float(values.max())
    counts, edges = np.histogram(values / top, bins=bins)
    return {"max_raw": top, "bin_edges": to_list(edges), "counts": counts.tolist(),
            "proportions": to_list(counts / len(values))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llava.analysis.attn_dispersion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--layer", type=int, default=1,
                        help="0-based LLM layer whose last-token attention is compared (default 1, as upstream)")
    parser.add_argument("--bins", type=int, default=200, help="histogram bins (default 200)")
    parser.add_argument("--hist-xmax", type=float, default=1.0,
                        help="right end of the histograms' x axis; upstream zoomed to 0.16 (default 1.0, the "
                             "whole normalised range)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the analysis; returns what was written to ``attn_dispersion.json``."""
    args = build_parser().parse_args(argv)
    tokenizer, model, processor = load_model(args)
    num_layers = model.config.num_hidden_layers
    if not 0 <= args.layer < num_layers:
        raise SystemExit(f"--layer {args.layer} is out of range: the LLM has {num_layers} layers (0-based)")
    run = Run()
    shares: dict[str, torch.Tensor] = {}
    raw: dict[str, list[np.ndarray]] = {"cls": [], "last": []}
    for sample in iter_sample_attentions(args, tokenizer, model, processor, run):
        vectors = {"cls": sample.cls, "last": sample.image_rows[args.layer][-1]}  # (N,), (V,)
        for name, v in vectors.items():
            s = sorted_shares(v)
            shares[name] = shares[name] + s if name in shares else s
            raw[name].append(v.cpu().numpy())
    out = Path(args.output_folder)
    report(run, out / "attn_dispersion.json", run_header(args))

    count = len(run.processed)
    curves = {name: cdf_curve((shares[name] / count).cpu().numpy()) for name in LABELS}
    hists = {name: normalized_histogram(np.concatenate(raw[name]), args.bins) for name in LABELS}
    result = {
        **run_header(args), "samples": run.summary(), "layer": args.layer,
        "cdf": {name: {"token_proportion_pct": to_list(x), "cumulative_attention_pct": to_list(y)}
                for name, (x, y) in curves.items()},
        "histograms": hists,
    }
    write_json(out / "attn_dispersion.json", result)

    save_cdf(out / "CDF.png", {LABELS[name]: curve for name, curve in curves.items()})
    for name, h in hists.items():
        save_log_histogram(out / f"{name}_attn_dist.png", np.asarray(h["bin_edges"]), np.asarray(h["proportions"]),
                           TITLES[name], xlim=(-0.01, args.hist_xmax))
    return result


if __name__ == "__main__":
    main()
