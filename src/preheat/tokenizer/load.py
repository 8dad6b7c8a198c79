"""A model's tokenizer alone, without its weights: what the API process needs to render
and tokenize prompts while the engine process loads the model."""
from __future__ import annotations

from pathlib import Path

from preheat.loader.model_path import is_gguf, model_path
from preheat.tokenizer.tokenizer import Tokenizer
from preheat.tokenizer.turn_formats import read_template_file


def load_tokenizer(model: str | Path | None = None, chat_template: str | Path | None = None) -> Tokenizer:
    """The tokenizer of ``model`` (as ``load_model`` takes it: None for the embedded model,
    a ``.gguf`` file or a Hugging Face folder), with ``chat_template`` (a Jinja file) in place
    of the model's template when given; raises ModelNotFoundError."""
    path = model_path(model)
    template = read_template_file(chat_template) if chat_template else None
    return (Tokenizer.from_gguf(path, template) if is_gguf(path)
            else Tokenizer.from_hf_folder(path, template))
