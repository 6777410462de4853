"""Tool calling as LLaMA-Factory writes it (its data/tool_utils.py and each template's function/observation
formats), for sharegpt data with a `tools` column and function_call/observation turns.

    messages = apply_tools(messages, tools_json, tool_format="qwen", template="qwen")

The result is plain system/user/assistant (and, where a family has one, ipython/observation/tool) turns
that any chat template renders: the tool schemas are appended to the system text, a function call becomes
the assistant's reply written in the family's call syntax, an observation becomes the turn the family
reads tool results from. Written here rather than imported: LLaMA-Factory cannot share this environment
(see shared notes), and only these four formats are honoured; runtime.config refuses the others.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from runtime.config import ConfigError

FORMATS = ("default", "qwen", "glm4", "llama3")

_DEFAULT_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n```\n'
)
_QWEN_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, '
    '"arguments": <args-json-object>}}\n</tool_call>'
)
_GLM4_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)
_LLAMA3_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a "
    'function call. Respond in the format {{"name": function name, "parameters": dictionary of argument '
    "name and its value}}. Do not use variables.\n\n{tool_text}"
)


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", {}) if tool.get("type") == "function" else tool


def _wrapped(tool: dict[str, Any]) -> dict[str, Any]:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _default_tools(tools: list[dict]) -> str:
    text, names = "", []
    for tool in map(_function, tools):
        params = tool.get("parameters", {})
        lines = ""
        for name, param in params.get("properties", {}).items():
            required = ", required" if name in params.get("required", []) else ""
            enum = ", should be one of [{}]".format(", ".join(param["enum"])) if param.get("enum") else ""
            items = (
                ", where each item should be {}".format(param["items"].get("type", ""))
                if param.get("items")
                else ""
            )
            kind, doc = param.get("type", ""), param.get("description", "")
            lines += f"  - {name} ({kind}{required}): {doc}{enum}{items}\n"
        doc = tool.get("description", "")
        text += f"> Tool Name: {tool['name']}\nTool Description: {doc}\nTool Args:\n{lines}\n"
        names.append(tool["name"])
    return _DEFAULT_PROMPT.format(tool_text=text, tool_names=", ".join(names))


def _qwen_tools(tools: list[dict]) -> str:
    return _QWEN_PROMPT.format(
        tool_text="".join("\n" + json.dumps(_wrapped(t), ensure_ascii=False) for t in tools)
    )


def _glm4_tools(tools: list[dict]) -> str:
    text = ""
    for tool in map(_function, tools):
        body = json.dumps(tool, indent=4, ensure_ascii=False)
        text += f"\n\n## {tool['name']}\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
    return _GLM4_PROMPT.format(tool_text=text)


def _llama3_tools(tools: list[dict]) -> str:
    text = "".join(json.dumps(_wrapped(t), indent=4, ensure_ascii=False) + "\n\n" for t in tools)
    return _LLAMA3_PROMPT.format(date=datetime.now().strftime("%d %b %Y"), tool_text=text)


def _calls(content: str) -> list[tuple[str, str]]:
    """A function_call turn's JSON (one call or a list) -> [(name, arguments as JSON)]."""
    try:
        calls = json.loads(content)
        calls = calls if isinstance(calls, list) else [calls]
        return [(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in calls]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            "dataset", f"a function_call turn is not JSON with name/arguments: {content[:80]!r}"
        ) from exc


def format_calls(content: str, tool_format: str) -> str:
    calls = _calls(content)
    if tool_format == "qwen":
        return "\n".join(
            "<tool_call>\n"
            + json.dumps({"name": n, "arguments": json.loads(a)}, ensure_ascii=False)
            + "\n</tool_call>"
            for n, a in calls
        )
    if tool_format == "glm4":
        if len(calls) > 1:
            raise ConfigError("tool_format", "glm4 has no parallel function calls; use another tool_format")
        return f"{calls[0][0]}\n{calls[0][1]}"
    if tool_format == "llama3":
        objects = [{"name": n, "parameters": json.loads(a)} for n, a in calls]
        return json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False)
    return "\n".join(f"Action: {n}\nAction Input: {a}" for n, a in calls)


def format_tools(tools: list[dict], tool_format: str) -> str:
    writer = {"qwen": _qwen_tools, "glm4": _glm4_tools, "llama3": _llama3_tools}.get(
        tool_format, _default_tools
    )
    return writer(tools) if tools else ""


# LLaMA-Factory's templates that carry their own tool format (template.py's format_function/format_tools);
# every other template uses "default". The second group is theirs but not written here: refused.
_QWEN = {"qwen", "qwen3", "qwen3_nothink", "qwen2_omni", "qwen3_omni", "qwen3_omni_nothink", "qwen2_vl"}
_QWEN |= {"qwen3_vl", "qwen3_vl_nothink", "keye_vl", "llava_next_qwen", "mimo", "mimo_v2", "mimo_vl"}
_LLAMA3 = {"llama3", "llama4", "mllama", "llava_next_llama3"}
_GLM4 = {"glm4", "glm4v", "glm_ocr", "glmz1", "chatglm3"}
_TEMPLATE_TOOL_FORMAT = {**dict.fromkeys(_QWEN, "qwen"), **dict.fromkeys(_LLAMA3, "llama3")}
_TEMPLATE_TOOL_FORMAT.update(dict.fromkeys(_GLM4, "glm4"))
_NOT_WRITTEN = {"qwen3_5", "qwen3_5_nothink", "qwen3_6", "glm4_moe", "glm4_5v", "glm4_7", "aeva", "gemma4"}
_NOT_WRITTEN |= {"gemma4n", "lfm2", "lfm2_vl", "minimax1", "minimax2", "seed_oss", "bailing_v2", "mistral"}
_NOT_WRITTEN |= {"ministral", "mistral_small", "ministral3", "pixtral", "llava_next_mistral"}
_NOT_WRITTEN |= {"llava_next_video_mistral"}
# Where a tool result goes (LLaMA-Factory's format_observation): role and content pattern; else a user turn.
_TOOL_ROLE = {"chatml", "chatml_de", "cpm4", "dbrx", "falcon_h1", "opencoder", "ernie", "gemma", "gemma2"}
_TOOL_ROLE |= {"gemma3", "gemma3n", "paligemma_chat", "granite4"}
_OBSERVATION = {
    **dict.fromkeys(_QWEN, ("user", "<tool_response>\n{}\n</tool_response>")),
    **dict.fromkeys(_LLAMA3, ("ipython", "{}")),
    **dict.fromkeys(_GLM4, ("observation", "{}")),
    **dict.fromkeys(_TOOL_ROLE, ("tool", "{}")),
}


def default_tool_format(template: str | None) -> str:
    """The tool format LLaMA-Factory's template of that name carries (default for the rest)."""
    name = template or ""
    if name in _NOT_WRITTEN:
        raise ConfigError(
            "tool_format",
            f"template {name}'s own tool format is not written by xgen-runtime; "
            f"set tool_format: one of {', '.join(FORMATS)}",
        )
    return _TEMPLATE_TOOL_FORMAT.get(name, "default")


def _observation(template: str | None) -> tuple[str, str]:
    """(role, content pattern) of a tool result in LLaMA-Factory's template (its format_observation)."""
    return _OBSERVATION.get(template or "", ("user", "{}"))


def parse_tools(tools: str) -> list[dict]:
    """The tools column (a JSON list of function schemas, or one schema) as a list; '' is none."""
    try:
        schemas = json.loads(tools) if tools else []
    except json.JSONDecodeError as exc:
        raise ConfigError("dataset", f"the tools column is not JSON: {tools[:80]!r}") from exc
    return schemas if isinstance(schemas, list) else [schemas]


def apply_tools(
    messages: list[dict],
    tools: str,
    *,
    tool_format: str | None,
    template: str | None,
    default_system: str = "",
) -> list[dict]:
    """Messages with roles system/user/assistant/function/observation -> turns a chat template renders.

    As in LLaMA-Factory the tool text follows the system text, the template's default system when the
    conversation has none (`default_system`: a template's own default, which the system turn replaces)."""
    has_tool_turns = any(m["role"] in ("function", "observation") for m in messages)
    if not tools and not has_tool_turns:
        return messages
    fmt = tool_format or default_tool_format(template)
    tool_text = format_tools(parse_tools(tools), fmt)
    out: list[dict] = []
    rest = messages
    if messages and messages[0]["role"] == "system":
        out.append({"role": "system", "content": messages[0]["content"] + tool_text})
        rest = messages[1:]
    elif tool_text:
        out.append({"role": "system", "content": default_system + tool_text})
    role, pattern = _observation(template)
    for m in rest:
        if m["role"] == "function":
            out.append({"role": "assistant", "content": format_calls(m["content"], fmt)})
        elif m["role"] == "observation":
            out.append({"role": role, "content": pattern.format(m["content"])})
        else:
            out.append(m)
    return out
