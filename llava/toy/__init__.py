"""Shipped data of the toy world: ``llava-v1.5-toy/``, the checkpoint ``llava.tools.train_toy --seed 0`` writes.

A liuhaotian-layout LLaVA-1.5 (config, fp16 LLM shards, sentencepiece tokenizer, ``vision_tower/``) that loads with
``llava.model.builder.load_pretrained_model`` like any released checkpoint; ``llava.tools.toy_demo`` evaluates it.
"""
