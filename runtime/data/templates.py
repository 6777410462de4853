"""Chat formatting: every LLaMA-Factory template name (data/template_table.py), or the tokenizer's own.

A named template turns a conversation into (prompt ids, reply ids) pairs the way LLaMA-Factory 0.9.5 does
(tests/runtime/data/test_templates.py compares the two on every template): each slot piece is tokenized on its
own, so the boundary between prompt and reply is exact and the ids equal LLaMA-Factory's. The template is
also written as a Jinja chat template and saved with the model (`chat_template_for_saving`), so inference
formats prompts the way training did.

With no `template:` the tokenizer's own chat template formats conversations; prompt masking then takes the
difference between successive renders (turn by turn), which is exact for any template that renders a
conversation's prefix as a prefix of its text.

Own code rather than LLaMA-Factory's: it cannot be imported next to this project's transformers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from runtime.config import ConfigError
from runtime.config.template_names import template_problem
from runtime.contract.say import note
from runtime.data.template_spec import CONTENT, Marker, Piece, Slot, Spec, Tok
from runtime.data.template_table import TEMPLATES

NAMED_TEMPLATES: dict[str, Spec] = TEMPLATES
FALLBACK_TEMPLATE = "chatml"  # for a tokenizer that has no chat template of its own
OBSERVATION_ROLES = ("tool", "observation")


# --- pieces -> text / ids -------------------------------------------------------------------------


def _fill(slot: Slot, content: str) -> list[Piece]:
    return [p.replace(CONTENT, content, 1) if isinstance(p, str) else p for p in slot]


def _piece_text(tokenizer, piece: Piece) -> str:
    if isinstance(piece, str):
        return piece
    if isinstance(piece, Tok):
        return piece.text
    token_id = tokenizer.bos_token_id if piece.which == "bos" else tokenizer.eos_token_id
    if token_id is None:
        return ""
    return tokenizer.bos_token if piece.which == "bos" else tokenizer.eos_token


def _piece_ids(tokenizer, piece: Piece) -> list[int]:
    if isinstance(piece, str):
        return tokenizer.encode(piece, add_special_tokens=False) if piece else []
    if isinstance(piece, Tok):  # looked up by name, so a tokenizer without it gives UNK (as LLaMA-Factory)
        return [tokenizer.convert_tokens_to_ids(piece.text)]
    token_id = tokenizer.bos_token_id if piece.which == "bos" else tokenizer.eos_token_id
    return [] if token_id is None else [token_id]


def _ids(tokenizer, pieces: list[Piece]) -> list[int]:
    return [i for piece in pieces for i in _piece_ids(tokenizer, piece)]


def _text(tokenizer, pieces: list[Piece]) -> str:
    return "".join(_piece_text(tokenizer, piece) for piece in pieces)


# --- the template ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatFormat:
    """How conversations become prompt/reply tokens. `spec` None means the tokenizer's own chat template.

    enable_thinking / preserve_thinking / default_system are LLaMA-Factory's data keys of the same names.
    """

    name: str
    spec: Spec | None
    enable_thinking: bool | None = True
    preserve_thinking: bool = False
    default_system: str | None = None

    @property
    def efficient_eos(self) -> bool:
        return self.spec is not None and self.spec.efficient_eos

    def system_for(self, system: str | None) -> str:
        if system:
            return system
        if self.default_system is not None:
            return self.default_system
        return self.spec.default_system if self.spec is not None else ""

    # --- named templates: pieces per message --------------------------------------------------------

    def _message_pieces(self, messages: list[dict], system: str, tool_text: str = "") -> list[list[Piece]]:
        """Turn 0 gets prefix + system; every message then gets its role's slot."""
        spec = self.spec
        assert spec is not None
        out = []
        for i, message in enumerate(messages):
            pieces: list[Piece] = []
            content, role = message["content"], message["role"]
            if i == 0:
                pieces += spec.prefix
                if system or tool_text:
                    system_pieces = _fill(spec.system, system + tool_text)
                    if spec.system_in_user:  # glued to the first message's text
                        content = str(system_pieces[0]) + content
                    else:
                        pieces += system_pieces
            if role == "user":
                pieces += _fill(spec.user, content)
            elif role == "assistant":
                pieces += _fill(spec.assistant, content)
            elif role in OBSERVATION_ROLES:
                pieces += _fill(spec.observation, content)
            elif role == "function":
                pieces += _fill(spec.function, content)
            else:
                raise ConfigError("template", f"a conversation has a message with role {role!r}")
            out.append(pieces)
        return out

    def _empty_thought(self) -> str:
        assert self.spec is not None
        opening, closing = self.spec.thought_words
        return closing if self.spec.thinking == "close_only" else opening + closing

    def _without_thought(self, content: str) -> str:
        assert self.spec is not None
        opening, closing = self.spec.thought_words
        pattern = re.compile(f"{re.escape(opening)}(.*?){re.escape(closing)}", re.DOTALL)
        return pattern.sub("", content).lstrip("\n")

    def _has_thought(self, content: str) -> bool:
        assert self.spec is not None
        opening, closing = self.spec.thought_words
        return opening.strip() in content or closing.strip() in content

    def _split_system(self, messages: list[dict], system: str | None) -> tuple[list[dict], str]:
        if messages and messages[0]["role"] == "system":
            system, messages = system or messages[0]["content"], messages[1:]
        return [dict(m) for m in messages], self.system_for(system)

    def turn_pieces(
        self,
        messages: list[dict],
        system: str | None = None,
        *,
        tool_text: str = "",
        discard_history_thoughts: bool = False,
    ) -> list[tuple[list[Piece], list[Piece]]]:
        """[(prompt pieces, reply pieces), ...], one pair per user/assistant exchange (LLaMA-Factory's
        encode_multiturn, reasoning templates included)."""
        spec = self.spec
        assert spec is not None
        messages, system = self._split_system(messages, system)
        if spec.thinking:
            for i in range(1, len(messages), 2):
                if self.enable_thinking is False or (discard_history_thoughts and i < len(messages) - 1):
                    messages[i]["content"] = self._without_thought(messages[i]["content"])
        per_message = self._message_pieces(messages, system, tool_text)
        pairs = [(per_message[i], per_message[i + 1]) for i in range(0, len(per_message) - 1, 2)]
        if spec.thinking:
            turns = [len(pairs) - 1] if discard_history_thoughts else range(len(pairs))
            for t in turns:
                if not self._has_thought(messages[2 * t + 1]["content"]):
                    self._add_empty_thought(pairs[t])
        return pairs

    def _add_empty_thought(self, pair: tuple[list[Piece], list[Piece]]) -> None:
        """Thinking on: the reply learns to open with an empty thought; off: the prompt carries it."""
        if self.enable_thinking:
            pair[1].insert(0, self._empty_thought())
        else:
            pair[0].append(self._empty_thought())

    def oneturn_pieces(
        self, messages: list[dict], system: str | None = None, *, tool_text: str = ""
    ) -> tuple[list[Piece], list[Piece]]:
        """(everything before the last reply, the last reply): LLaMA-Factory's encode_oneturn."""
        spec = self.spec
        assert spec is not None
        messages, system = self._split_system(messages, system)
        if spec.thinking:
            if not self.preserve_thinking:
                for i in range(1, len(messages) - 2, 2):
                    messages[i]["content"] = self._without_thought(messages[i]["content"])
            if self.enable_thinking is False:
                messages[-1]["content"] = self._without_thought(messages[-1]["content"])
        per_message = self._message_pieces(messages, system, tool_text)
        prompt = [p for pieces in per_message[:-1] for p in pieces]
        pair = (prompt, list(per_message[-1]))
        if spec.thinking and not self._has_thought(messages[-1]["content"]):
            self._add_empty_thought(pair)
        return pair

    # --- what tokenization calls ------------------------------------------------------------------

    def encode_multiturn(
        self,
        tokenizer,
        messages: list[dict],
        system: str | None = None,
        *,
        tool_text: str = "",
        discard_history_thoughts: bool = False,
    ) -> list[tuple[list[int], list[int]]]:
        """[(prompt ids, reply ids), ...] for a conversation ending with a reply."""
        if self.spec is None:
            segments = self.segments(tokenizer, self._own_messages(messages, system))
            return [
                (_encode_text(tokenizer, a), _encode_text(tokenizer, b))
                for (a, _), (b, _) in zip(segments[0::2], segments[1::2], strict=True)
            ]
        pairs = self.turn_pieces(
            messages, system, tool_text=tool_text, discard_history_thoughts=discard_history_thoughts
        )
        return [(_ids(tokenizer, a), _ids(tokenizer, b)) for a, b in pairs]

    def encode_oneturn(
        self, tokenizer, messages: list[dict], system: str | None = None, *, tool_text: str = ""
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, last reply ids): earlier turns count as prompt."""
        if self.spec is None:
            head, reply = self.split_last_reply(tokenizer, self._own_messages(messages, system))
            return _encode_text(tokenizer, head), _encode_text(tokenizer, reply)
        prompt, reply = self.oneturn_pieces(messages, system, tool_text=tool_text)
        return _ids(tokenizer, prompt), _ids(tokenizer, reply)

    def render(self, tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        """The text training sees for a conversation (a leading system message is the system prompt).

        With add_generation_prompt, the conversation (ending with a user turn) as a model is prompted.
        """
        if self.spec is None:
            return self._render_own(tokenizer, messages, add_generation_prompt=add_generation_prompt)
        if add_generation_prompt:
            prompt, _ = self.oneturn_pieces([*messages, {"role": "assistant", "content": ""}])
            return _text(tokenizer, prompt)
        return "".join(_text(tokenizer, a) + _text(tokenizer, b) for a, b in self.turn_pieces(messages))

    def prompt_text(self, tokenizer, messages: list[dict], system: str = "") -> str:
        """The text a model is given at inference: the conversation plus the assistant header."""
        return self.render(tokenizer, with_system(messages, system), add_generation_prompt=True)

    # --- the tokenizer's own chat template --------------------------------------------------------

    def _own_messages(self, messages: list[dict], system: str | None) -> list[dict]:
        if messages and messages[0]["role"] == "system":
            return list(messages)
        return with_system(messages, self.system_for(system))

    def _render_own(self, tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        extra: dict[str, Any] = {}
        if self.enable_thinking is not None:
            extra["enable_thinking"] = self.enable_thinking  # templates that do not know it ignore it
        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
            )
        except Exception as exc:  # jinja TemplateError, raise_exception() inside the template, ...
            raise ConfigError(
                "template", f"the {self.name} chat template failed on a conversation: {exc}"
            ) from exc

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
            head = self._render_own(tokenizer, messages[:i], add_generation_prompt=True)
            full = self._render_own(tokenizer, messages[: i + 1])
            if not (head.startswith(done) and full.startswith(head)):
                head, reply = self.split_last_reply(tokenizer, messages)
                return [(head, False), (reply, True)]
            out += [(head[len(done) :], False), (full[len(head) :], True)]
            done = full
        return out

    def split_last_reply(self, tokenizer, messages: list[dict]) -> tuple[str, str]:
        """(everything before the last reply, the last reply as rendered): history counts as prompt."""
        head = self._render_own(tokenizer, messages[:-1], add_generation_prompt=True)
        full = self._render_own(tokenizer, messages)
        if not full.startswith(head):
            raise ConfigError(
                "template",
                f"the {self.name} chat template does not render the prompt as the start of the conversation, "
                "so prompt tokens cannot be masked; name a template (qwen3, llama3, ...: LLaMA-Factory's)",
            )
        return head, full[len(head) :]

    # --- saving -----------------------------------------------------------------------------------

    def jinja(self, tokenizer) -> str | None:
        """This template as a Jinja chat template (None: the tokenizer's own)."""
        if self.spec is None:
            return None
        bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else ""
        eos = tokenizer.eos_token if tokenizer.eos_token_id is not None else ""
        return spec_jinja(
            self.spec,
            bos=bos,
            eos=eos,
            enable_thinking=self.enable_thinking,
            preserve_thinking=self.preserve_thinking,
            default_system=self.system_for(None),
        )

    def chat_template_for_saving(self, tokenizer) -> str | None:
        """The chat template to save with the model so inference formats prompts as training did:
        the tokenizer's own when it renders a probe conversation exactly like this template, else ours."""
        own = getattr(tokenizer, "chat_template", None)
        ours = self.jinja(tokenizer)
        if ours is None or (own and not self.spec.replace_jinja and self._same(tokenizer, own, ours)):
            return own
        return ours

    def _same(self, tokenizer, own: str, ours: str) -> bool:
        turns = [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ]
        probes = []
        for head in ([], [{"role": "system", "content": "S"}]):
            probes += [(head + turns, True), ([*head, *turns, {"role": "assistant", "content": "A2"}], False)]
        try:
            for messages, generation in probes:
                a = tokenizer.apply_chat_template(
                    messages, chat_template=own, tokenize=False, add_generation_prompt=generation
                )
                b = tokenizer.apply_chat_template(
                    messages, chat_template=ours, tokenize=False, add_generation_prompt=generation
                )
                if a != b:
                    return False
        except Exception:  # the tokenizer's template refuses the probe: save ours
            return False
        return True


def _encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def with_system(messages: list[dict], system: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + list(messages)


# --- Jinja ----------------------------------------------------------------------------------------


def _lit(text: str) -> str:
    """A Jinja string literal (Jinja reads backslash escapes; non-ASCII text stays as it is)."""
    return json.dumps(text, ensure_ascii=False)


def _jinja_expr(slot: Slot, variable: str, bos: str, eos: str) -> str:
    """A slot as one Jinja expression, the message text taken from `variable`."""
    parts = []
    for piece in slot:
        if isinstance(piece, Marker):
            text = bos if piece.which == "bos" else eos
            if text:
                parts.append(_lit(text))
            continue
        text = piece.text if isinstance(piece, Tok) else piece
        before, found, after = text.partition(CONTENT)
        if before:
            parts.append(_lit(before))
        if found:
            parts.append(variable)
        if after:
            parts.append(_lit(after))
    return " + ".join(parts) if parts else "''"


def spec_jinja(
    spec: Spec,
    *,
    bos: str = "",
    eos: str = "",
    enable_thinking: bool | None = True,
    preserve_thinking: bool = False,
    default_system: str | None = None,
) -> str:
    """A Jinja chat template that renders conversations exactly as training formats them.

    Inference ends the prompt after the last user turn (its slot already opens the reply); with thinking
    off, a reasoning template's prompt also carries the empty thought, as in training. Reasoning templates
    render like LLaMA-Factory's one-turn encoding (its inference and rm/dpo prompts): earlier replies lose
    their thoughts unless preserve_thinking, the last reply gets an empty thought when it has none.
    """

    def expr(slot: Slot, variable: str = "content") -> str:
        return _jinja_expr(slot, variable, bos, eos)

    opening, closing = spec.thought_words
    empty_thought = closing if spec.thinking == "close_only" else opening + closing
    out = [
        "{%- set system_message = "
        + _lit(spec.default_system if default_system is None else default_system)
        + " -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}",
        "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}",
    ]
    if spec.prefix:
        out.append("{{- " + expr(spec.prefix) + " -}}")
    if not spec.system_in_user:
        out.append(
            "{%- if system_message -%}{{- " + expr(spec.system, "system_message") + " -}}{%- endif -%}"
        )
    out.append("{%- for message in loop_messages -%}{%- set content = message['content'] -%}")
    if spec.system_in_user:
        out.append(
            "{%- if loop.first and system_message -%}"
            "{%- set content = " + expr(spec.system[:1], "system_message") + " + content -%}{%- endif -%}"
        )
    out.append("{%- if message['role'] == 'user' -%}{{- " + expr(spec.user) + " -}}")
    assistant = ""
    if spec.thinking:  # as LLaMA-Factory prompts at inference: thoughts of earlier replies are dropped
        drop = "true" if enable_thinking is False else "false" if preserve_thinking else "not loop.last"
        o, c = _lit(opening), _lit(closing)
        without = f"(content.split({o})[0] + content.split({c}, 1)[1]).lstrip('\\n')"
        bare = f"{_lit(opening.strip())} not in content and {_lit(closing.strip())} not in content"
        assistant = (
            f"{{%- if ({drop}) and {o} in content and {c} in content -%}}"
            f"{{%- set content = {without} -%}}{{%- endif -%}}"
            # the last reply without a thought opens with an empty one, before the reply's slot
            f"{{%- if loop.last and {bare} -%}}{{{{- {_lit(empty_thought)} -}}}}{{%- endif -%}}"
        )
    out.append(
        "{%- elif message['role'] == 'assistant' -%}" + assistant + "{{- " + expr(spec.assistant) + " -}}"
    )
    out.append(
        "{%- elif message['role'] in ['tool', 'observation'] -%}{{- " + expr(spec.observation) + " -}}"
        "{%- endif -%}{%- endfor -%}"
    )
    if spec.thinking and not enable_thinking:
        out.append("{%- if add_generation_prompt -%}{{- " + _lit(empty_thought) + " -}}{%- endif -%}")
    return "".join(out)


def chat_template(name: str) -> str:
    """A named template as a Jinja chat template, for a tokenizer built in code
    (runtime/commands/make_tiny.py, bench/).
    Only for templates that name no BOS/EOS token (chatml): those need the tokenizer's own tokens."""
    return spec_jinja(NAMED_TEMPLATES[name])


# --- choosing a template --------------------------------------------------------------------------


def fix_tokenizer(spec: Spec, tokenizer) -> list[str]:
    """LLaMA-Factory's tokenizer fixes for a template: the first stop word becomes EOS (replace_eos), the
    other stop words become special tokens, a missing EOS/pad is filled. Returns the tokens it added."""
    before = set(tokenizer.get_vocab())
    stop_words = list(spec.stop_words)
    if spec.replace_eos and stop_words:
        if tokenizer.eos_token != stop_words[0]:
            tokenizer.add_special_tokens({"eos_token": stop_words[0]})
        stop_words = stop_words[1:]
    if tokenizer.eos_token_id is None:
        tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if stop_words:
        try:  # transformers 5.x names the keyword this way; older ones call it replace_additional_...
            tokenizer.add_special_tokens(
                {"additional_special_tokens": stop_words}, replace_extra_special_tokens=False
            )
        except TypeError:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": stop_words}, replace_additional_special_tokens=False
            )
    return sorted(set(tokenizer.get_vocab()) - before)


def resolve_template(
    name: str | None,
    tokenizer,
    *,
    enable_thinking: bool | None = True,
    preserve_thinking: bool = False,
    default_system: str | None = None,
) -> ChatFormat:
    """`template:` from the config -> ChatFormat, fixing the tokenizer as LLaMA-Factory does and setting
    its chat_template to what will be saved with the model. None: the tokenizer's own (chatml if none)."""
    options: dict[str, Any] = dict(
        enable_thinking=enable_thinking, preserve_thinking=preserve_thinking, default_system=default_system
    )
    if name is None or name == "":
        if getattr(tokenizer, "chat_template", None):
            return ChatFormat(name="tokenizer's own", spec=None, **options)
        note(f"the tokenizer has no chat template; using {FALLBACK_TEMPLATE}")
        name = FALLBACK_TEMPLATE
    if name not in NAMED_TEMPLATES:  # the parser already refused it (runtime.config.template_names)
        raise ConfigError("template", template_problem(name) or f"unknown template {name!r}")
    spec = NAMED_TEMPLATES[name]
    chat = ChatFormat(name=name, spec=spec, **options)
    added = fix_tokenizer(spec, tokenizer)
    if added:
        note(f"template {name}: added {', '.join(added)} to the tokenizer as special tokens")
    if spec.multimodal and spec.multimodal not in ("Qwen2VLPlugin", "Qwen3VLPlugin"):  # runtime/mm: images
        note(f"template {name} is a multimodal template; text conversations only (no images/videos/audio)")
    elif spec.multimodal:
        note(f"template {name}: images train on a Qwen-VL model (runtime/mm), text conversations otherwise")
    tokenizer.chat_template = chat.chat_template_for_saving(tokenizer)
    return chat
