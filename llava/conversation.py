"""Prompt templates of LLaVA (``conv_templates``), with the exact separators the checkpoints were trained on."""
from __future__ import annotations

import dataclasses
from enum import Enum, auto


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


@dataclasses.dataclass
class Conversation:
    """A chat history rendered into one prompt string by :meth:`get_prompt`.

    ``messages`` holds ``[role, text]`` pairs; a ``None`` text marks the turn the model is to write.
    """

    system: str
    roles: tuple[str, str]
    messages: list[list] = dataclasses.field(default_factory=list)
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"

    def __post_init__(self):
        # Own the history: templates derived with dataclasses.replace would otherwise share one list.
        self.messages = [list(m) for m in self.messages]

    def get_prompt(self) -> str:
        style = self.sep_style
        if style == SeparatorStyle.SINGLE:
            ret = self.system + self.sep
            for role, message in self.messages:
                ret += f"{role}: {message}{self.sep}" if message else f"{role}:"
        elif style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(self.messages):
                ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        elif style == SeparatorStyle.MPT:
            ret = self.system + self.sep
            for role, message in self.messages:
                ret += role + message + self.sep if message else role
        elif style == SeparatorStyle.LLAMA_2:
            ret = ""
            for i, (role, message) in enumerate(self.messages):
                if i == 0 and (not message or role != self.roles[0]):
                    raise ValueError("LLAMA_2 prompts must start with a non-empty user message")
                if not message:
                    continue
                if i == 0 and self.system:
                    message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{message}"
                if i % 2 == 0:
                    ret += f"{self.sep}[INST] {message} [/INST]"
                else:
                    ret += f" {message} {self.sep2}"
            # str.lstrip strips characters, not a prefix; LLaVA relies on exactly that.
            ret = ret.lstrip(self.sep)
        elif style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2 or "")
            ret = self.system
            for i, (_, message) in enumerate(self.messages):
                if message:
                    ret += message + seps[i % 2]
        else:
            raise ValueError(f"invalid separator style: {style}")
        return ret

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return dataclasses.replace(self)


_HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_MMTAG_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant is able to understand the visual content that the user provides, and assist the user "
                 "with a variety of tasks using natural language."
                 "The visual content will be provided with the following format: <Image>visual content</Image>.")
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
           "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"), version="v1", sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>")
conv_llava_v1 = dataclasses.replace(conv_vicuna_v1, system=_HUMAN_SYSTEM)
conv_llava_v1_mmtag = dataclasses.replace(conv_vicuna_v1, system=_MMTAG_SYSTEM, version="v1_mmtag")
conv_llava_v0 = Conversation(system=_HUMAN_SYSTEM, roles=("Human", "Assistant"), sep_style=SeparatorStyle.SINGLE, sep="###")
conv_llava_v0_mmtag = dataclasses.replace(conv_llava_v0, system=_MMTAG_SYSTEM, version="v0_mmtag")
conv_llava_plain = Conversation(system="", roles=("", ""), sep_style=SeparatorStyle.PLAIN, sep="\n")
conv_llava_llama_2 = Conversation(
    system="You are a helpful language and vision assistant. You are able to understand the visual content that "
           "the user provides, and assist the user with a variety of tasks using natural language.",
    roles=("USER", "ASSISTANT"), version="llama_v2", sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>")
conv_mistral_instruct = dataclasses.replace(conv_llava_llama_2, system="", sep="")
conv_mpt = Conversation(
    system="<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
           "The assistant gives helpful and honest answers.",
    roles=_CHATML_ROLES, version="mpt", sep_style=SeparatorStyle.MPT, sep="<|im_end|>")
conv_chatml_direct = dataclasses.replace(conv_mpt, system="<|im_start|>system\nAnswer the questions.")

conv_templates: dict[str, Conversation] = {
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "mpt": conv_mpt,
}
default_conversation = conv_vicuna_v1
