"""Attention analyses of the FasterVLM paper (§3), run on an unpruned LLaVA model.

* ``python -m llava.analysis.attn_shift``: per LLM layer, how the prefill attention to the visual
  tokens is distributed (full / image / text / last query rows), next to the vision tower's [CLS]
  attention.
* ``python -m llava.analysis.attn_dispersion``: how concentrated the [CLS] attention is compared
  with the last prompt token's attention in an early LLM layer (sorted CDF and histograms).

Both write PNG plots and the numbers behind them as JSON. Shared pieces: :mod:`.data` (question
files and prompts), :mod:`.collect` (the forward pass and the image-token span), :mod:`.plotting`.
"""
