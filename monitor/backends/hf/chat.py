"""A tokenizer's chat template on its own: conversations rendered as a model would see them.

The ``hf`` backend renders its prompts with it, and the ``openai`` backend with the
tokenizer an endpoint names (``endpoint.tokenizer``) when the server does not show
its own template: multiple choice under ``format: chat`` then scores its choices on
``/v1/completions`` after the text this renders.  Loading one loads the tokenizer
only (transformers, no torch model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from monitor.backends.base import PROBE_CONVERSATION, ChatTemplate, fold_system, one_line, template_digest
from monitor.errors import BackendError, ModelLoadError


@contextlib.contextmanager
def transformers_silenced() -> Iterator[None]:
    """transformers' "Loading weights" progress bars and its logged notices, off for the block.

    A run's output is the monitor's: a notice such as "passing an attention_mask is recommended"
    (our prefix pass starts with a token that doubles as padding, on purpose) is noise there.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class ChatRenderer:
    """``apply_chat_template(..., add_generation_prompt=True)`` of one tokenizer, probed once for a system role."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._template: ChatTemplate | None = None
        self._known = False

    def template(self) -> ChatTemplate | None:
        """The tokenizer's chat template (None without one).

        A template that raises on a system message, or renders without it, has no system role.
        """
        if self._known:
            return self._template
        if getattr(self.tokenizer, "chat_template", None):
            try:
                rendered = self.render(PROBE_CONVERSATION)
                system_role = PROBE_CONVERSATION[0][1] in rendered
            except BackendError:
                system_role = False
            if not system_role:
                rendered = self.render(fold_system(PROBE_CONVERSATION))
            self._template = ChatTemplate(template_digest(rendered), system_role, "tokenizer")
        self._known = True
        return self._template

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        """``messages`` through the template, with the generation prompt.

        Raises :class:`BackendError` when there is no template or the template refuses the conversation.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(f"{self.name} has no chat template")
        conversation = [{"role": role, "content": content} for role, content in messages]
        try:
            with transformers_silenced():
                text = self.tokenizer.apply_chat_template(
                    conversation, tokenize=False, add_generation_prompt=True
                )
        except Exception as exc:  # jinja2's TemplateError (raise_exception in a template) and kin
            raise BackendError(
                f"the chat template of {self.name} refuses this conversation: {one_line(exc)}"
            ) from exc
        return str(text)


def load_chat_renderer(path: str) -> ChatRenderer:
    """The chat renderer of the tokenizer at ``path`` (a local folder, or one in the Hugging Face cache).

    Raises:
        ModelLoadError: the tokenizer cannot be loaded, or it has no chat template.
    """
    with transformers_silenced():
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer {path}: {one_line(exc)}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"the tokenizer {path} has no chat template to render conversations with")
    return ChatRenderer(tokenizer, path)
