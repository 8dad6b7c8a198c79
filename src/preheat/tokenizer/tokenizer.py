"""The tokenizer the engine and API use: ids <-> text, special-token ids and the chat template."""

from __future__ import annotations

import functools

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from preheat.loader.gguf_file import GGUFFile
from preheat.tokenizer import turn_formats
from preheat.tokenizer.chat_template import ChatTemplate
from preheat.tokenizer.gguf_tokenizer import gguf_backend, gguf_metadata

# End-of-turn markers of common chat formats (ChatML, Llama 3, Phi-3, Gemma); when a template
# writes one after each message, generation must stop on it, not only on the EOS token.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` with the model's special tokens and chat template.

    Attributes:
        vocab_size: number of ids the tokenizer can produce (added tokens included).
        bos_token_id / bos_token: beginning-of-sequence token, if the model has one.
        eos_token_id / eos_token: the end-of-sequence token.
        eos_token_ids: every id that ends generation (EOS, end-of-turn markers, generation config).
        chat_template: the Jinja chat template in use: the model's own, else its family's turn
            format (``turn_formats.py``), unless ``--chat-template`` named another.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        eos_token_id: int,
        bos_token_id: int | None = None,
        stop_token_ids: Iterable[int] = (),
        add_bos: bool = False,
        chat_template: str | None = None,
    ):
        self.backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.bos_token: str | None = backend.id_to_token(bos_token_id) if bos_token_id is not None else None
        self.eos_token_id = eos_token_id
        self.eos_token: str = backend.id_to_token(eos_token_id)
        self.add_bos = add_bos and bos_token_id is not None
        self.chat_template = chat_template
        self._template = ChatTemplate(chat_template or turn_formats.CHATML)
        stops = {eos_token_id, *stop_token_ids, *self._end_of_turn_ids()}
        self.eos_token_ids: frozenset[int] = frozenset(stops)

    @classmethod
    def from_gguf(cls, reader_or_path: GGUFFile | str | Path, chat_template: str | None = None) -> Tokenizer:
        """Build from a GGUF file's `tokenizer.*` metadata; ``chat_template`` overrides the file's."""
        reader = reader_or_path if isinstance(reader_or_path, GGUFFile) else GGUFFile(reader_or_path)
        model = gguf_metadata(reader, "tokenizer.ggml.model")
        eos = gguf_metadata(reader, "tokenizer.ggml.eos_token_id")
        if eos is None:
            raise ValueError("GGUF file has no tokenizer.ggml.eos_token_id")
        stops = [gguf_metadata(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")]
        return cls(
            gguf_backend(reader),
            eos_token_id=int(eos),
            bos_token_id=gguf_metadata(reader, "tokenizer.ggml.bos_token_id"),
            stop_token_ids=[int(i) for i in stops if i is not None],
            # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
            add_bos=bool(gguf_metadata(reader, "tokenizer.ggml.add_bos_token", model == "llama")),
            chat_template=(chat_template or gguf_metadata(reader, "tokenizer.chat_template")
                           or turn_formats.for_gguf(gguf_metadata(reader, "general.architecture"))),
        )

    @classmethod
    def from_hf_folder(cls, path: str | Path, chat_template: str | None = None) -> Tokenizer:
        """Build from `tokenizer.json`, with `tokenizer_config.json`, `generation_config.json` and
        `config.json` (all optional) supplying special tokens, stop ids and the chat template."""
        folder = Path(path)
        backend = Backend.from_file(str(folder / "tokenizer.json"))
        settings = _read_optional_json(folder / "tokenizer_config.json")
        generation = _read_optional_json(folder / "generation_config.json")
        model = _read_optional_json(folder / "config.json")

        eos = _hf_token_id("eos", backend, settings, generation, model)
        if eos is None:
            raise ValueError(f"{folder}: cannot tell the EOS token (no eos_token in tokenizer_config.json)")
        bos = _hf_token_id("bos", backend, settings, generation, model)
        # Without an explicit flag, the tokenizer's own post-processor says whether BOS is added.
        add_bos = settings.get("add_bos_token")
        if add_bos is None:
            add_bos = bos is not None and backend.encode("").ids[:1] == [bos]
        return cls(
            backend,
            eos_token_id=eos,
            bos_token_id=bos,
            stop_token_ids=_as_id_list(generation.get("eos_token_id")),
            add_bos=bool(add_bos),
            chat_template=(chat_template or _hf_chat_template(folder, settings)
                           or turn_formats.for_hf(model)),
        )

    @property
    def template_supports_tools(self) -> bool:
        """True when the chat template references `tools` (so tool definitions reach the model)."""
        return self._template.supports_tools

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token decodes to (at most its vocabulary string's length,
        byte-level or not): a text of n characters is at least n / this many tokens."""
        return max(map(len, self.backend.get_vocab(with_added_tokens=True)), default=1)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text map to their ids. Never adds BOS."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str, *, bos: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of a full prompt plus each token's (start, end) character offsets into `text`.

        BOS (offset (0, 0)) is prepended when the model wants it and the text does not already
        start with it (chat templates often write it themselves); `bos=False` for the rest of
        a prompt whose start is already tokenized.
        """
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids, offsets = list(encoding.ids), list(encoding.offsets)
        if bos and self.add_bos and not (self.bos_token and text.startswith(self.bos_token)):
            ids.insert(0, self.bos_token_id)
            offsets.insert(0, (0, 0))
        return ids, offsets

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; an incomplete UTF-8 sequence at the end decodes to U+FFFD."""
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        **template_vars: Any,
    ) -> str:
        """Render `messages` (`{"role", "content"}` dicts) into a prompt with the chat
        template; `template_vars` are what some templates read (Qwen3's `enable_thinking`)."""
        return self._template.render(
            **template_vars,
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token,
        )

    def _end_of_turn_ids(self) -> set[int]:
        ids = {self.backend.token_to_id(m) for m in END_OF_TURN_MARKERS if m in self._template.source}
        ids.discard(None)
        return ids


def _hf_token_id(name: str, backend: Backend, settings: dict, *fallbacks: dict) -> int | None:
    """Id of `{name}_token` from tokenizer_config.json, else the first `{name}_token_id` in `fallbacks`."""
    key = f"{name}_token"
    if key in settings:  # an explicit null (e.g. Qwen2's bos_token) means the model has none
        token = settings[key]
        if isinstance(token, dict):  # an AddedToken serialized as a dict
            token = token.get("content")
        return backend.token_to_id(token) if token is not None else None
    for config in fallbacks:
        ids = _as_id_list(config.get(f"{name}_token_id"))
        if ids:
            return ids[0]
    return None


def _hf_chat_template(folder: Path, settings: dict) -> str | None:
    """The default chat template: `chat_template.jinja` (transformers >= 4.43) or tokenizer_config.json."""
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    template = settings.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {entry["name"]: entry["template"] for entry in template}
        return named.get("default")
    return template


def _as_id_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _read_optional_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
