"""Visual token pruning methods behind one option, ``--pruning-method`` (see ``README.md`` beside this file).

Adding a method is one small file: a dataclass subclass of :class:`PruningMethod` (prunes before the LLM) or
:class:`InLLMPruningMethod` (prunes inside it), decorated with :func:`register`. Its dataclass fields are its
parameters; fields with a ``flag`` in their metadata become CLI options. A built-in method is imported at the bottom
of this module; a method of your own lives in your module, loaded with ``--import MODULE`` or through the
``fastervlm.pruning`` entry-point group (``llava.pruning.registry``).
"""
from __future__ import annotations

from llava.pruning.base import (InLLMPruningMethod, LLMPruningContext, PruningMethod, TowerOutputs, TowerRequest,
                                check_budget, select_topk_raster)
from llava.pruning.registry import (ENTRY_POINT_GROUP, CLIParameter, MethodChoices, available_methods,
                                    check_installed, cli_parameters, get_method, import_modules, load_plugins,
                                    method_parameters, register)

# The methods register themselves on import, in this order (the CLI's): FasterVLM, the paper's Table 5 ablations
# (a) random, (b) patch attention, (d) [CLS] at LLM layer 2, (e) [CLS] + merging, then FastV and AdaptPrune.
from llava.pruning import fastervlm  # noqa: E402,F401  isort: skip
from llava.pruning import random_patches  # noqa: E402,F401  isort: skip
from llava.pruning import patch_attn  # noqa: E402,F401  isort: skip
from llava.pruning import cls_llm_layer  # noqa: E402,F401  isort: skip
from llava.pruning import cls_merge  # noqa: E402,F401  isort: skip
from llava.pruning import fastv  # noqa: E402,F401  isort: skip
from llava.pruning import adaptprune  # noqa: E402,F401  isort: skip
# The comparison methods (docs/methods.md): VisPruner, VisionZip, DivPrune, PyramidDrop, SparseVLM.
from llava.pruning import vispruner  # noqa: E402,F401  isort: skip
from llava.pruning import visionzip  # noqa: E402,F401  isort: skip
from llava.pruning import divprune  # noqa: E402,F401  isort: skip
from llava.pruning import pdrop  # noqa: E402,F401  isort: skip
from llava.pruning import sparsevlm  # noqa: E402,F401  isort: skip

__all__ = ["ENTRY_POINT_GROUP", "CLIParameter", "InLLMPruningMethod", "LLMPruningContext", "MethodChoices",
           "PruningMethod", "TowerOutputs", "TowerRequest", "available_methods", "check_budget", "check_installed",
           "cli_parameters", "get_method", "import_modules", "load_plugins", "method_parameters", "register",
           "select_topk_raster"]
