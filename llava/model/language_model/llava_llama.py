"""LLaVA on LLaMA/Vicuna (``LlavaLlamaForCausalLM``), the class of every liuhaotian LLaVA-1.5/1.6 checkpoint."""
from __future__ import annotations

import dataclasses

import torch
import transformers
from packaging import version
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.compat import MODEL_CACHE_KWARG, OUTPUT_CACHE_FIELD, output_cache, pop_cache
from llava.model.llava_arch import LLMPruningPlan, LlavaMetaForCausalLM, LlavaMetaModel, PruningInfo
from llava.pruning import llm


# transformers 5's generate extends explicit position_ids at each decode step; 4.x recomputes them from the mask.
_GENERATE_EXTENDS_POSITION_IDS = version.parse(transformers.__version__).major >= 5


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig
    # [FasterVLM] Video-LLaVA checkpoints embed both LanguageBind towers, which upstream never loads; the towers
    # load their weights themselves (languagebind.py), so these keys are expected to go unused.
    _keys_to_ignore_on_load_unexpected = [r"^model\.(image|video)_tower\."]

    def __init__(self, config, visual_token_num: int | None = None, anyres_protocol: str | None = None):
        super(LlamaForCausalLM, self).__init__(config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_pruning(visual_token_num)  # [FasterVLM] per-image visual token budget, FasterVLM, no report yet
        if anyres_protocol is not None:  # [FasterVLM] LLaVA-NeXT crop protocol; None keeps config.anyres_protocol
            self.set_anyres_protocol(anyres_protocol)
        self.post_init()

    def get_model(self) -> LlavaLlamaModel:
        return self.model

    def llm_pruning_plan(self, pruning: PruningInfo, cache=None) -> LLMPruningPlan | None:
        """[FasterVLM] The in-LLM pruning a prefill on this splice must do; None for a before-LLM method, no budget,
        no image in the sequence, or a cache that already holds tokens (only a prefill prunes)."""
        method = self.get_pruning_method()
        if (method.llm_layer is None or self.visual_token_num is None or not pruning.visual_spans
                or (cache is not None and cache.get_seq_length() > 0)):
            return None
        video_tower = getattr(self.get_model(), "video_tower", None)
        patches = (video_tower or self.get_vision_tower()).num_patches
        return LLMPruningPlan(method, self.visual_token_num, patches, pruning)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, images=None, image_sizes=None, logits_to_keep=0,
                pruning_plan: LLMPruningPlan | None = None, **kwargs):
        """LlamaForCausalLM's forward on spliced embeddings.

        [FasterVLM] Works for full forwards with images (log-likelihood, training), which upstream
        FasterVLM broke by changing the splice's return arity. Extra kwargs such as ``cache_position``
        (passed by newer ``generate``) go straight to the LLM. With an in-LLM pruning method (FastV, ...), the prefill
        runs ``llava.pruning.llm``'s decoder loop on ``pruning_plan`` (made here from the splice when ``images`` are
        given, by ``generate`` otherwise), and the decode steps on the cache it pruned continue that loop.
        The KV cache may come as ``past_key_values`` (LLaVA's name) or ``cache`` (transformers >= 5.24's).
        ``logits_to_keep`` is named so that ``generate`` sees it and asks for the last position's logits only
        (the LM head over a whole 600-token prompt would be wasted work).
        """
        past_key_values = pop_cache(past_key_values, kwargs)
        if inputs_embeds is None and self.has_visual_input(input_ids, images):
            spliced = self.splice(input_ids, attention_mask, labels, images, image_sizes)
            input_ids, inputs_embeds = None, spliced.inputs_embeds
            position_ids = None if position_ids is None else spliced.position_ids
            attention_mask = None if attention_mask is None else spliced.attention_mask.to(attention_mask.dtype)
            labels = None if labels is None else spliced.labels
            pruning_plan = self.llm_pruning_plan(spliced.pruning, past_key_values)
            if pruning_plan is None:
                self.last_pruning = spliced.pruning
        if pruning_plan is not None or llm.pruned_cache(past_key_values) is not None:
            return self._forward_llm_pruning(pruning_plan, input_ids, attention_mask, position_ids, past_key_values,
                                             inputs_embeds, labels, use_cache, logits_to_keep, **kwargs)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **{MODEL_CACHE_KWARG: past_key_values}, **kwargs)

    def _forward_llm_pruning(self, plan, input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                             labels, use_cache, logits_to_keep=0, **kwargs) -> CausalLMOutputWithPast:
        """[FasterVLM] LlamaForCausalLM's forward through ``llava.pruning.llm``'s decoder loop: the prefill that
        prunes by ``plan``, or (``plan`` None) a decode step on the cache such a prefill filled.

        At prefill the logits (and the labels they are scored against) cover only the positions that layers ≥ K
        kept; ``last_pruning`` then reports the surviving patches (``kept_indices``) and K (``llm_layer``).
        """
        for flag in ("output_attentions", "output_hidden_states"):
            if kwargs.pop(flag, False):
                raise NotImplementedError(f"{flag} is not supported with an in-LLM pruning method")
        kwargs.pop("return_dict", None)
        model = self.get_model()
        if inputs_embeds is None:
            inputs_embeds = model.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if plan is None:
            outputs = llm.decode(model, llm.pruned_cache(past_key_values), inputs_embeds, attention_mask, position_ids,
                                 past_key_values, use_cache, **kwargs)
        else:
            info = plan.pruning
            prompts, batch = len(info.visual_tokens), inputs_embeds.shape[0]
            if batch % prompts or max(end for _, _, end in info.visual_spans) > inputs_embeds.shape[1]:
                raise ValueError("the embeddings do not match the splice of the pruning plan")
            images = llm.image_tokens(info.visual_spans, info.token_sources, info.crops_per_image, info.cls_attn,
                                      plan.patches, batch, prompts)
            result = llm.prefill(model, plan.method, images, plan.budget, inputs_embeds, attention_mask,
                                 position_ids, past_key_values, use_cache, **kwargs)
            outputs = result.outputs
            # Beam search repeats each prompt's row; record the first copy of each image.
            self.last_pruning = dataclasses.replace(
                info, kept_indices=llm.kept_patches(images[::batch // prompts], result.keep),
                llm_layer=plan.method.llm_layer)
            if labels is not None:
                labels = labels.gather(1, result.kept_positions)
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:]  # 0 keeps all
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{OUTPUT_CACHE_FIELD: output_cache(outputs)})

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, image_sizes=None, **kwargs) -> torch.LongTensor:
        """Generate from prompt ids with ``<image>`` placeholders; returns only the new token ids (as upstream).

        [FasterVLM] Returns plain ids like LLaVA (upstream FasterVLM returned a 3-tuple); the kept
        token count and indices of this call are in ``self.last_pruning``. A batch is spliced left-padded, as
        generation needs, whatever side the prompt ids were padded on.
        """
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("pass prompt ids as `inputs`, not `inputs_embeds`")
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if self.has_visual_input(inputs, images):
            spliced = self.splice(inputs, attention_mask, None, images, image_sizes, side="left")
            inputs_embeds = spliced.inputs_embeds
            position_ids = None if position_ids is None else spliced.position_ids
            attention_mask = None if attention_mask is None else spliced.attention_mask.to(attention_mask.dtype)
            plan = self.llm_pruning_plan(spliced.pruning)
            if plan is None:
                self.last_pruning = spliced.pruning
            else:  # the prefill's forward reports what it kept
                kwargs["pruning_plan"] = plan
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
            self.last_pruning = None
        if attention_mask is not None and position_ids is None and _GENERATE_EXTENDS_POSITION_IDS:
            # Left-padded batches: each sequence's positions start at its first real token, as at batch size 1.
            # transformers 4.x derives exactly these from the mask itself and cannot extend explicit ones.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return super().generate(position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                **kwargs)

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, pruning_plan=None, **kwargs):
        # Images were already spliced into inputs_embeds by ``generate``; decode steps must not re-encode them.
        # [FasterVLM] The pruning plan goes to the prefill only (an empty cache); decode steps find the pruned cache.
        # The cache is passed through under whatever name this transformers release gives it.
        kwargs.pop("images", None)
        kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(input_ids, *args, inputs_embeds=inputs_embeds, **kwargs)
        cache = inputs.get(MODEL_CACHE_KWARG, inputs.get("past_key_values"))
        if pruning_plan is not None and (cache is None or cache.get_seq_length() == 0):
            inputs["pruning_plan"] = pruning_plan
        return inputs
