"""Chat templates: `render_chat_template` renders a conversation exactly as transformers'
`apply_chat_template(..., tokenize=False)` does, in the same sandboxed Jinja environment."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

__all__ = ["render_chat_template"]


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    **template_kwargs: Any,
) -> str:
    """Render one conversation exactly as transformers' `apply_chat_template(..., tokenize=False)` does."""
    if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
        raise TypeError("tools must be JSON schemas (dicts).")
    if documents is not None and not all(isinstance(doc, Mapping) for doc in documents):
        raise TypeError("documents must be dicts with 'title' and 'text' keys.")
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"Chat messages must be dicts, got {message!r}.")
        message = _plain_data({key: value for key, value in message.items() if value is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        chat.append(message)
    final_message = None
    if continue_final_message:
        if not chat or not isinstance(chat[-1].get("content"), str):
            raise ValueError("continue_final_message needs a final message with text content.")
        final_message = chat[-1]["content"]
        chat[-1]["content"] = final_message + _CONTINUE_TAG
    rendered = _compile_chat_template(template).render(
        messages=chat,
        tools=_plain_data(tools),
        documents=_plain_data(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain_data(template_kwargs),
    )
    if final_message is not None:
        if final_message.strip() not in rendered or _CONTINUE_TAG.strip() not in rendered:
            raise ValueError("continue_final_message is set but the chat template dropped part of the final message.")
        cut = rendered.rindex(_CONTINUE_TAG.strip())
        keeps_spacing = rendered[cut : cut + len(_CONTINUE_TAG)] == _CONTINUE_TAG
        rendered = rendered[:cut] if keeps_spacing else rendered[:cut].rstrip()
    return rendered


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_TEMPLATE_CACHE: dict[str, Any] = {}


def _plain_data(value: Any) -> Any:
    """Copy into plain JSON-like types, so the sandboxed template sees no rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):
        return _plain_data(value.item())
    for base in (str, bool, int, float):  # subclasses (enums, ...) back to the base type
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {_plain_data(k): _plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_data(v) for v in value)
    return f"<{type(value).__name__}>"


def _compile_chat_template(template: str):
    """Compile with transformers' Jinja environment: immutable sandbox, trim_blocks, lstrip_blocks, loop controls,
    `{% generation %}` blocks, `raise_exception`, `strftime_now`, a non-escaping `tojson`."""
    if template in _TEMPLATE_CACHE:
        return _TEMPLATE_CACHE[template]
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(jinja2.ext.Extension):
        """Accept `{% generation %}...{% endgeneration %}` (assistant-mask markers) and render the body as is."""

        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller):
            return caller()

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace()` that refuses underscore attributes, like transformers'."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace.check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace.check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"Chat templates cannot set namespace attribute {name!r}.")

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    compiled = env.from_string(template)
    _TEMPLATE_CACHE[template] = compiled
    return compiled
