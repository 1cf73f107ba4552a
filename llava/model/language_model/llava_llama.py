"""LLaVA on LLaMA/Vicuna (``LlavaLlamaForCausalLM``), the class of every liuhaotian LLaVA-1.5/1.6 checkpoint."""
from __future__ import annotations

import torch
import transformers
from packaging import version
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


# transformers 5's generate extends explicit position_ids at each decode step; 4.x recomputes them from the mask.
_GENERATE_EXTENDS_POSITION_IDS = version.parse(transformers.__version__).major >= 5


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig

    def __init__(self, config, visual_token_num: int | None = None, anyres_protocol: str | None = None):
        super(LlamaForCausalLM, self).__init__(config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.set_visual_token_num(visual_token_num)  # [FasterVLM] per-image visual token budget
        if anyres_protocol is not None:  # [FasterVLM] LLaVA-NeXT crop protocol; None keeps config.anyres_protocol
            self.set_anyres_protocol(anyres_protocol)
        self.post_init()

    def get_model(self) -> LlavaLlamaModel:
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, images=None, image_sizes=None, **kwargs):
        """LlamaForCausalLM's forward on spliced embeddings.

        [FasterVLM] Works for full forwards with images (log-likelihood, training), which upstream
        FasterVLM broke by changing the splice's return arity. Extra kwargs such as ``cache_position``
        (passed by newer ``generate``) go straight to the LLM.
        """
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds,
             labels) = self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask,
                                                                 past_key_values, labels, images, image_sizes)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                               use_cache=use_cache, **kwargs)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, image_sizes=None, **kwargs) -> torch.LongTensor:
        """Generate from prompt ids with ``<image>`` placeholders; returns only the new token ids (as upstream).

        [FasterVLM] Returns plain ids like LLaVA (upstream FasterVLM returned a 3-tuple); the kept
        token count and indices of this call are in ``self.last_pruning``.
        """
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("pass prompt ids as `inputs`, not `inputs_embeds`")
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if images is not None:
            _, position_ids, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes=image_sizes)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
            self.last_pruning = None
        if attention_mask is not None and position_ids is None and _GENERATE_EXTENDS_POSITION_IDS:
            # Left-padded batches: each sequence's positions start at its first real token, as at batch size 1.
            # transformers 4.x derives exactly these from the mask itself and cannot extend explicit ones.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return super().generate(position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        # Images were already spliced into inputs_embeds by ``generate``; decode steps must not re-encode them.
        kwargs.pop("images", None)
        kwargs.pop("image_sizes", None)
        return super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                     inputs_embeds=inputs_embeds, **kwargs)
