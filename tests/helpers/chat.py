"""Tiny models whose tokenizers carry chat templates, in two styles.

``CHATML`` has a system role and starts with the BOS text; ``NO_SYSTEM``
(Gemma-like) has none and raises on a system message, so the runner must fold
the system prompt into the first user turn.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def with_chat_template(model_dir: Path, out_dir: Path, template: str) -> Path:
    """A copy of the model folder ``model_dir`` whose tokenizer carries ``template``."""
    from transformers import AutoTokenizer

    shutil.copytree(model_dir, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out_dir)
    return out_dir
