"""Attention shift: where each LLM layer's prefill attention to the visual tokens goes, next to [CLS] attention.

    python -m llava.analysis.attn_shift --model-path ./checkpoints/llava-v1.5-7b \\
        --question-file ./playground/data/analysis/llava_v1_5_mix1k.jsonl \\
        --image-folder ./playground/data/train --output-folder ./playground/data/analysis/attn_shift

Per sample and LLM layer, A is the head-mean prefill attention from the Q query rows at and after the
first visual token to the V visual tokens (rows 0..V-1 are the visual tokens, the rest the text after
the image; the span comes from the prompt, not upstream's hard-coded 35..610). For visual token j:

* ``full``  = Σ over all Q rows ÷ (Q − j), the rows that may attend to token j under the causal mask;
* ``image`` = Σ over the V visual rows ÷ (V − j);
* ``text``  = Σ over rows V..Q−2 ÷ (Q − V − 1). Upstream divided by Q − V, one more than the rows it
  summed (the last row is excluded), so its ``text`` values were low by a factor (Q−V−1)/(Q−V);
* ``last``  = row Q−1, the last prompt token's attention.

Each is averaged over the analysed samples, as is ``cls``, the vision tower's head-mean [CLS] attention.

Outputs in ``--output-folder``: ``attn_shift.json`` (every number plotted, plus the skipped samples),
``cls_attn/{dist,map}.png`` and ``{full,image,text,last}_attn/{dist,map}/layer_{i}.png`` for each
LLM layer i (0-based file names, 1-based titles, as upstream). Maps need a square single-crop grid.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from llava.analysis.collect import Run, add_common_args, iter_sample_attentions, load_model, report, run_header
from llava.analysis.plotting import grid_side, save_bar, save_map, to_list, write_json

QUANTITIES = ("full", "image", "text", "last")
DEFINITIONS = {
    "full": "column sum over the Q rows from the first visual token on / (Q - j)",
    "image": "column sum over the V visual-token rows / (V - j)",
    "text": "column sum over rows V..Q-2 / (Q - V - 1) (upstream divided by Q - V: off by one)",
    "last": "row Q-1, the last prompt token",
    "cls": "vision tower's head-mean [CLS] attention of the selected layer",
    "average": "every quantity is the mean over the analysed samples",
}


def shift_quantities(a: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """``a``: (Q, V) head-mean attention of one layer → four (V,) vectors; ``text`` is None without text rows."""
    q, v = a.shape
    j = torch.arange(v, device=a.device, dtype=a.dtype)
    n_text = q - v - 1  # text rows between the image and the last prompt token
    return {
        "full": a.sum(dim=0) / (q - j),
        "image": a[:v].sum(dim=0) / (v - j),
        "text": a[v:q - 1].sum(dim=0) / n_text if n_text > 0 else None,
        "last": a[q - 1],
    }


class MeanAccumulator:
    """Running sums of named vectors with their own sample counts (``text`` can be absent for a sample)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self, name: str) -> np.ndarray | None:
        if name not in self.sums:
            return None
        return (self.sums[name] / self.counts[name]).cpu().numpy()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llava.analysis.attn_shift", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the analysis; returns what was written to ``attn_shift.json``."""
    args = build_parser().parse_args(argv)
    tokenizer, model, processor = load_model(args)
    run = Run()
    cls = MeanAccumulator()
    layers: list[MeanAccumulator] = []
    for sample in iter_sample_attentions(args, tokenizer, model, processor, run):
        cls.add("cls", sample.cls)
        if not layers:
            layers = [MeanAccumulator() for _ in sample.image_rows]
        for acc, a in zip(layers, sample.image_rows):
            for name, value in shift_quantities(a).items():
                if value is not None:
                    acc.add(name, value)
    out = Path(args.output_folder)
    report(run, out / "attn_shift.json", run_header(args))

    cls_mean = cls.mean("cls")
    visual = len(layers[0].mean("last"))
    result = {
        **run_header(args), "samples": run.summary(), "num_layers": len(layers),
        "visual_tokens": visual, "grid_side": grid_side(visual), "definitions": DEFINITIONS,
        "cls": to_list(cls_mean),
        "layers": [{**{name: None if acc.mean(name) is None else to_list(acc.mean(name)) for name in QUANTITIES},
                    "samples": {name: acc.counts.get(name, 0) for name in QUANTITIES}} for acc in layers],
    }
    write_json(out / "attn_shift.json", result)

    # Upstream clipped the 576-token [CLS] plot at 0.005 ≈ 3/576, cutting off a few outliers; scale that with N.
    save_bar(out / "cls_attn" / "dist.png", cls_mean, "[CLS] Attention Distribution", ylim=3 / len(cls_mean))
    save_map(out / "cls_attn" / "map.png", cls_mean, "[CLS] Attention Map")
    for i, acc in enumerate(layers):
        for name in QUANTITIES:
            values = acc.mean(name)
            if values is None:
                continue
            label = name.capitalize()
            save_bar(out / f"{name}_attn" / "dist" / f"layer_{i}.png", values,
                     f"{label} Attention Distribution Layer {i + 1}")
            save_map(out / f"{name}_attn" / "map" / f"layer_{i}.png", values, f"{label} Attention Map Layer {i + 1}")
    return result


if __name__ == "__main__":
    main()
