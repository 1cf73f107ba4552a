"""fastervlm: LLaVA with FasterVLM's [CLS]-attention visual token pruning (arXiv 2412.01818)."""

__version__ = "1.1.0"
