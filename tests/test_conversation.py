"""Prompt strings of LLaVA's templates, written out by hand from LLaVA's training format."""
import pytest

from llava.conversation import conv_templates

Q = "<image>\nWhat is shown?"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")

EXPECTED = {
    "vicuna_v1": f"{VICUNA_SYSTEM} USER: {Q} ASSISTANT:",
    "llava_v1": f"{HUMAN_SYSTEM} USER: {Q} ASSISTANT:",
    "llava_v0": f"{HUMAN_SYSTEM}###Human: {Q}###Assistant:",
    "plain": f"{Q}\n",
    "mistral_instruct": f"[INST] {Q} [/INST]",
    "chatml_direct": f"<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{Q}<|im_end|><|im_start|>assistant\n",
    "llava_llama_2": "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
                     "content that the user provides, and assist the user with a variety of tasks using natural language."
                     f"\n<</SYS>>\n\n{Q} [/INST]",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_single_turn_prompt(name):
    conv = conv_templates[name].copy()
    conv.append_message(conv.roles[0], Q)
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == EXPECTED[name]


def test_multi_turn_vicuna_closes_answers_with_eos():
    conv = conv_templates["vicuna_v1"].copy()
    for role, msg in [(0, Q), (1, "A cat."), (0, "What colour?"), (1, None)]:
        conv.append_message(conv.roles[role], msg)
    assert conv.get_prompt() == f"{VICUNA_SYSTEM} USER: {Q} ASSISTANT: A cat.</s>USER: What colour? ASSISTANT:"


def test_copy_does_not_share_messages():
    a = conv_templates["vicuna_v1"].copy()
    a.append_message("USER", "hi")
    assert conv_templates["vicuna_v1"].messages == [] and conv_templates["vicuna_v1"].copy().messages == []


def test_required_templates_exist():
    for name in ["vicuna_v1", "llava_v1", "llava_v0", "plain", "llava_llama_2", "mistral_instruct", "chatml_direct", "mpt"]:
        assert name in conv_templates


def test_templates_do_not_share_histories():
    ids = {id(t.messages) for t in conv_templates.values()}
    assert len(ids) == len({id(t) for t in conv_templates.values()})
