"""What a chat template is, as data: a few slots, a default system prompt, stop words and flags.

The field meanings follow LLaMA-Factory's `register_template` so its ~120 templates transcribe one to one
(runtime/data/template_table.py); runtime/data/templates.py turns a Spec into token ids and labels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Marker:
    """The tokenizer's BOS or EOS token, whatever it is called (skipped when the tokenizer has none)."""

    which: str  # "bos" | "eos"


BOS, EOS = Marker("bos"), Marker("eos")


@dataclass(frozen=True)
class Tok:
    """A token looked up by its name rather than encoded as text (chatglm3's `<|user|>`, `[gMASK]`)."""

    text: str


Piece = str | Marker | Tok
Slot = tuple[Piece, ...]
CONTENT = "{content}"  # where a slot's text takes the message


@dataclass(frozen=True)
class Spec:
    """One chat template. A slot is a tuple of pieces; each piece is tokenized on its own.

    prefix       once, before everything (BOS, `[gMASK]<sop>`, ...)
    system       the system prompt, once, before the first user turn
    user         a user turn, including the header that introduces the reply
    assistant    a reply, including what ends it (default: content + EOS, or content alone with efficient_eos)
    observation  a tool result (default: the user slot); function: a tool call (default: the assistant slot)
    default_system   used when a conversation brings no system prompt
    stop_words   tokens that end a reply; added to the tokenizer as special tokens (LLaMA-Factory does)
    efficient_eos    replies carry no EOS of their own: one EOS closes the sequence, and the first token of
                     each later prompt is trained to predict it
    replace_eos  the first stop word becomes the tokenizer's EOS token
    replace_jinja    always save this template as the tokenizer's chat template (otherwise only when the
                     tokenizer's own template formats conversations differently or is missing)
    system_in_user   the system prompt is glued to the first user message (llama2, mistral, gemma)
    thinking     None, "reasoning" (a reply without a thought gets an empty one: trained when thinking is
                 on, part of the prompt when off) or "close_only" (the same, the empty thought being only
                 the closing word)
    thought_words    how a thought opens and closes
    tool_format  how tool schemas and calls are written (LLaMA-Factory's tool_format name)
    multimodal   LLaMA-Factory's multimodal plugin name: text-only conversations format as usual
    """

    prefix: Slot = ()
    system: Slot = (CONTENT,)
    user: Slot = (CONTENT,)
    assistant: Slot | None = None
    observation: Slot | None = None
    function: Slot | None = None
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    efficient_eos: bool = False
    replace_eos: bool = False
    replace_jinja: bool = False
    system_in_user: bool = False
    thinking: str | None = None
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    tool_format: str = "default"
    multimodal: str = ""

    def __post_init__(self) -> None:
        if self.assistant is None:
            object.__setattr__(self, "assistant", (CONTENT,) if self.efficient_eos else (CONTENT, EOS))
        if self.observation is None:
            object.__setattr__(self, "observation", self.user)
        if self.function is None:
            object.__setattr__(self, "function", self.assistant)


CHATML_SYSTEM: Slot = ("<|im_start|>system\n{content}<|im_end|>\n",)
CHATML_USER: Slot = ("<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",)
CHATML_ASSISTANT: Slot = ("{content}<|im_end|>\n",)


def chatml(**fields) -> Spec:
    """A template of the chatml family: `<|im_start|>role\\n...<|im_end|>\\n` turns, plus `fields`."""
    return Spec(system=CHATML_SYSTEM, user=CHATML_USER, assistant=CHATML_ASSISTANT, **fields)
