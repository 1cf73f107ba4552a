"""Matplotlib helpers (Agg backend, no display needed) shared by the analyses, plus JSON output."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

# Upstream's font; the generic-family list falls back to DejaVu Serif without a warning when it is missing.
plt.rcParams.update({"font.family": "serif", "font.serif": ["Times New Roman", "DejaVu Serif"],
                     "pdf.fonttype": 42, "ps.fonttype": 42})


def grid_side(n: int) -> int | None:
    """Side of the square patch grid holding ``n`` tokens, or None when ``n`` is not a square.

    Maps are drawn for single-crop square grids only (24×24 for CLIP-L/336, 6×6 for the tiny tower);
    a multi-crop LLaVA-NeXT token sequence has no single grid and gets distribution plots only.
    """
    side = math.isqrt(n)
    return side if side * side == n and n > 0 else None


def save_bar(path: Path, values: np.ndarray, title: str, ylim: float | None = None) -> None:
    """Attention per visual token (1-based token index on x), as upstream's ``dist`` plots."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=96)
    # One filled step artist instead of one rectangle per token: the same picture (upstream's 576 bars are
    # under a pixel wide at this size), drawn in milliseconds rather than a second per plot.
    ax.stairs(values, np.arange(len(values) + 1) + 0.5, fill=True)
    if ylim is not None:
        ax.set_ylim(0, ylim)
    ax.set_title(title, fontsize=16)
    ax.set_xlabel("Token Index", fontsize=14)
    ax.set_ylabel("Attention Score", fontsize=14)
    fig.savefig(path)
    plt.close(fig)


def save_map(path: Path, values: np.ndarray, title: str) -> bool:
    """Attention as a patch-grid heat map; False (nothing written) when the tokens form no square grid."""
    side = grid_side(len(values))
    if side is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=96)
    ax.imshow(values.reshape(side, side), cmap="viridis")
    ax.axis("off")
    ax.set_title(title, fontsize=16)
    fig.savefig(path)
    plt.close(fig)
    return True


def save_cdf(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Cumulative attention (%) against the proportion of tokens (%), one line per label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6))
    fig.subplots_adjust(left=0.15, bottom=0.15, right=0.85, top=0.85)
    ax.grid()
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label)
    ax.set_title("Cumulative Distribution", fontsize=20)
    ax.set_xlabel("Token Proportion (%)", fontsize=16)
    ax.set_ylabel("Cumulative Attention (%)", fontsize=16)
    ax.legend(fontsize=16)
    fig.savefig(path)
    plt.close(fig)


def log_axis(proportions: np.ndarray) -> tuple[float, list[float], list[str]]:
    """Natural-log y axis for proportions: ``(bottom, tick positions, tick labels)``.

    A tick at height ``ln(10^k)`` is labelled ``10^k``, for every decade from the lowest non-empty bin's
    to 10⁰. Upstream plotted ``5 + ln p`` and labelled heights 0..4 as 10⁻⁵..10⁻¹, but height 0 is
    p = e⁻⁵ ≈ 6.7·10⁻³ and height 4 is e⁻¹ ≈ 0.37.
    """
    low = min(math.floor(math.log10(proportions[proportions > 0].min())), -1)
    decades = range(low, 1)
    return low * math.log(10), [k * math.log(10) for k in decades], [f"$10^{{{k}}}$" for k in decades]


def save_log_histogram(path: Path, bin_edges: np.ndarray, proportions: np.ndarray, title: str,
                       xlim: tuple[float, float]) -> None:
    """Histogram with ln(proportion) on y (see :func:`log_axis`); empty bins (ln 0 = −∞) are left blank."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base, ticks, labels = log_axis(proportions)
    nonzero = proportions > 0
    centers = (bin_edges[:-1] + bin_edges[1:]) / 2
    heights = np.where(nonzero, np.log(np.where(nonzero, proportions, 1.0)) - base, 0.0)  # bars rise from `base`
    fig, ax = plt.subplots(figsize=(6, 6))
    fig.subplots_adjust(left=0.15, bottom=0.15, right=0.85, top=0.85)
    ax.bar(centers, heights, width=bin_edges[1] - bin_edges[0], bottom=base)
    ax.set_yticks(ticks, labels, fontsize=12)
    ax.set_ylim(base, 0.0)
    ax.set_xlim(*xlim)
    ax.set_title(title, fontsize=20)
    ax.set_xlabel("Attention Score (normalized)", fontsize=16)
    ax.set_ylabel("Proportion (log scale)", fontsize=16)
    fig.savefig(path)
    plt.close(fig)


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as indented JSON; NaN is written as null (JSON has no NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(obj), indent=1), encoding="utf-8")


def to_list(values: np.ndarray | Sequence[float]) -> list[float]:
    """Plain Python floats for JSON."""
    return np.asarray(values, dtype=float).tolist()


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
