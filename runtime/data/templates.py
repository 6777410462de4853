"""Chat formatting: LLaMA-Factory's common template names as Jinja chat templates, or the tokenizer's own.

Every template is a Jinja chat template rendered by `tokenizer.apply_chat_template`, so training,
the saved tokenizer (`chat_template_for_saving`) and inference (vLLM, `generate`) format turns the
same way. Prompt masking needs to know which characters belong to assistant replies: `segments()`
renders the conversation turn by turn and takes the difference between successive renders, which
is exact for any template that renders a conversation's prefix as a prefix of its text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from runtime.config import ConfigError

_CHATML_TURNS = (
    "{% for m in loop_messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _with_system(default: str, body: str, system_fmt: str) -> str:
    """Split a leading system message off (or use `default`), print it with `system_fmt`, then the turns."""
    return (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
        f"{{% else %}}{{% set system = {default!r} %}}{{% set loop_messages = messages %}}{{% endif %}}"
        f"{{% if system %}}{system_fmt}{{% endif %}}" + body
    )


NAMED_TEMPLATES: dict[str, str] = {
    "chatml": _with_system("", _CHATML_TURNS, "{{ '<|im_start|>system\n' + system + '<|im_end|>\n' }}"),
    "qwen": _with_system(
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        _CHATML_TURNS,
        "{{ '<|im_start|>system\n' + system + '<|im_end|>\n' }}",
    ),
    "llama3": _with_system(
        "",
        "{% for m in loop_messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + system + '<|eot_id|>' }}",
    ).replace("{% if system %}", "{{ bos_token }}{% if system %}", 1),
    "mistral": _with_system(
        "",
        "{% for m in loop_messages %}{% if m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
        "{% else %}{{ '[INST] ' + (system + '\n\n' if loop.first and system else '') + m['content'] }}"
        "{{ ' [/INST]' }}"
        "{% endif %}{% endfor %}",
        "",
    ).replace("{% if system %}", "{{ bos_token }}{% if system %}", 1),
    "alpaca": _with_system(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.",
        "{% for m in loop_messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\n\n' }}"
        "{% else %}{{ '### Instruction:\n' + m['content'] + '\n\n### Response:\n' }}{% endif %}{% endfor %}",
        "{{ system + '\n\n' }}",
    ),
    "default": _with_system(
        "",
        "{% for m in loop_messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\n' }}"
        "{% else %}{{ 'Human: ' + m['content'] + eos_token + '\nAssistant:' }}{% endif %}{% endfor %}",
        "{{ 'System: ' + system + eos_token + '\n' }}",
    ),
    "empty": _with_system("", "{% for m in loop_messages %}{{ m['content'] }}{% endfor %}", "{{ system }}"),
}
FALLBACK_TEMPLATE = "chatml"  # for a tokenizer that has no chat template of its own


@dataclass(frozen=True)
class ChatFormat:
    """How conversations become text. `jinja` None means the tokenizer's own chat template."""

    name: str
    jinja: str | None

    def render(self, tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages,
                chat_template=self.jinja,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja TemplateError, raise_exception() inside the template, ...
            raise ConfigError(
                "template", f"the {self.name} chat template failed on a conversation: {exc}"
            ) from exc

    def prompt_text(self, tokenizer, messages: list[dict], system: str = "") -> str:
        """The text a model is given at inference: the conversation plus the assistant header."""
        return self.render(tokenizer, with_system(messages, system), add_generation_prompt=True)

    def segments(self, tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
        """[(text, is_assistant_reply), ...] whose concatenation is the rendered conversation.

        Falls back to training only the last reply when a template re-renders earlier turns
        differently once later turns exist (then the turn-by-turn prefixes do not line up).
        """
        out: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or i == 0:
                continue
            head = self.render(tokenizer, messages[:i], add_generation_prompt=True)
            full = self.render(tokenizer, messages[: i + 1])
            if not (head.startswith(done) and full.startswith(head)):
                return self._last_reply_only(tokenizer, messages)
            out += [(head[len(done) :], False), (full[len(head) :], True)]
            done = full
        return out

    def _last_reply_only(self, tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
        head, reply = self.split_last_reply(tokenizer, messages)
        return [(head, False), (reply, True)]

    def split_last_reply(self, tokenizer, messages: list[dict]) -> tuple[str, str]:
        """(everything before the last reply, the last reply as rendered): history counts as prompt."""
        head = self.render(tokenizer, messages[:-1], add_generation_prompt=True)
        full = self.render(tokenizer, messages)
        if not full.startswith(head):
            raise ConfigError(
                "template",
                f"the {self.name} chat template does not render the prompt as the start of the conversation, "
                f"so prompt tokens cannot be masked; name one of {', '.join(NAMED_TEMPLATES)}",
            )
        return head, full[len(head) :]

    def chat_template_for_saving(self, tokenizer) -> str | None:
        """What to store as the saved tokenizer's chat_template so inference formats like training."""
        return self.jinja if self.jinja is not None else tokenizer.chat_template


def with_system(messages: list[dict], system: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + list(messages)


def resolve_template(name: str | None, tokenizer) -> ChatFormat:
    """`template:` from the config -> ChatFormat; None means the tokenizer's own (chatml if it has none)."""
    if name is None or name == "":
        if getattr(tokenizer, "chat_template", None):
            return ChatFormat(name="tokenizer's own", jinja=None)
        if os.environ.get("RANK", "0") == "0":
            print(
                f"xgen-runtime: note: the tokenizer has no chat template; using {FALLBACK_TEMPLATE}",
                flush=True,
            )
        return ChatFormat(name=FALLBACK_TEMPLATE, jinja=NAMED_TEMPLATES[FALLBACK_TEMPLATE])
    if name not in NAMED_TEMPLATES:
        raise ConfigError(
            "template", f"unknown template {name!r}; choose one of {', '.join(NAMED_TEMPLATES)}"
        )
    return ChatFormat(name=name, jinja=NAMED_TEMPLATES[name])
