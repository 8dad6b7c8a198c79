"""Document, search_result and image blocks, as the text a text-only model reads.

Each becomes one text block at its place, keeping its ``cache_control``, so it takes part
in prompt caching like any block and ``count_tokens`` counts what the model reads:

- ``document`` with a ``text`` source, a ``content`` source (its text blocks joined) or a
  base64 PDF (its text layer, page by page, read with ``pypdf``), wrapped with its title
  and context; ``citations`` are accepted, and none are generated.
- ``search_result``: its source, title and text.
- ``image``: the served model cannot see it. By default it is a 400 naming the block, as
  Anthropic answers for a model without vision: an answer about a picture the model never
  saw would look right and be made up. ``--images placeholder`` puts a short note in its
  place instead, for agents (a screenshot in a tool result) whose session must go on.

A PDF's text is kept by the digest of its bytes, so a conversation that sends the same PDF
on every turn parses it once: the cache hit then skips the parse as well as the prefill.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
from collections import OrderedDict
from typing import Literal

from preheat.server.errors import InvalidRequestError
from preheat.server.protocol import (Base64PdfSource, ContentSource, DocumentBlock, ImageBlock,
                                     PlainTextSource, SearchResultBlock, TextBlock,
                                     ToolResultBlock)

ImagePolicy = Literal["reject", "placeholder"]
IMAGE_PLACEHOLDER = "[an image was here; this model reads text only and did not see it]"
MAX_PDF_PAGES = 100  # Anthropic's limit for one PDF
PDF_CACHE_ENTRIES = 16

log = logging.getLogger(__name__)


class DocumentReader:
    """Turns a message's document, search_result and image blocks into text blocks."""

    def __init__(self, images: ImagePolicy = "reject"):
        self.images = images
        self._pdf_texts: OrderedDict[bytes, str] = OrderedDict()

    def read_content(self, blocks: list, where: str) -> list:
        """``blocks`` (a message's content at ``where``) with every readable block as text;
        the list itself when there is nothing to turn."""
        if not any(isinstance(b, (DocumentBlock, SearchResultBlock, ImageBlock, ToolResultBlock))
                   for b in blocks):
            return blocks
        return [self._read_block(b, f"{where}.{i}") for i, b in enumerate(blocks)]

    def _read_block(self, block, where: str):
        if isinstance(block, ToolResultBlock):
            content = self.read_content(block.content, f"{where}.content")
            return block if content is block.content else block.model_copy(
                update={"content": content})
        if isinstance(block, DocumentBlock):
            return TextBlock(type="text", text=self._document_text(block, where),
                             cache_control=block.cache_control)
        if isinstance(block, SearchResultBlock):
            return TextBlock(type="text", text=_search_result_text(block),
                             cache_control=block.cache_control)
        if isinstance(block, ImageBlock):
            return TextBlock(type="text", text=self._image_text(where),
                             cache_control=block.cache_control)
        return block

    def _image_text(self, where: str) -> str:
        if self.images == "reject":
            raise InvalidRequestError(
                f"{where}: image blocks are not supported: the served model reads text only "
                "(a server started with --images placeholder puts a note in their place)")
        return IMAGE_PLACEHOLDER

    def _document_text(self, block: DocumentBlock, where: str) -> str:
        source = block.source
        if isinstance(source, PlainTextSource):
            body = source.data
        elif isinstance(source, ContentSource):
            body = "\n".join(self._content_text(part, f"{where}.source.content.{i}")
                             for i, part in enumerate(source.content))
        else:
            assert isinstance(source, Base64PdfSource)
            body = self._pdf_text(source.data, f"{where}.source")
        head = [f"<title>{block.title}</title>"] if block.title else []
        if block.context:
            head.append(f"<context>{block.context}</context>")
        return "\n".join(["<document>", *head, body, "</document>"])

    def _content_text(self, part, where: str) -> str:
        return part.text if isinstance(part, TextBlock) else self._image_text(where)

    def _pdf_text(self, data: str, where: str) -> str:
        try:
            pdf = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(f"{where}.data: not valid base64") from None
        digest = hashlib.sha256(pdf).digest()
        if (text := self._pdf_texts.get(digest)) is not None:
            self._pdf_texts.move_to_end(digest)
            return text
        text = pdf_text(pdf, where)
        self._pdf_texts[digest] = text
        if len(self._pdf_texts) > PDF_CACHE_ENTRIES:
            self._pdf_texts.popitem(last=False)
        return text


def pdf_text(pdf: bytes, where: str) -> str:
    """The text layer of a PDF, its pages separated by a blank line; a PDF that can't be
    read, has too many pages or holds no text at all is a 400 at ``where``."""
    import pypdf  # only requests with a PDF pay for the import

    try:
        reader = pypdf.PdfReader(io.BytesIO(pdf))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidRequestError(f"{where}: the PDF is password-protected")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise InvalidRequestError(f"{where}: the PDF has {len(reader.pages)} pages; at "
                                      f"most {MAX_PDF_PAGES} are read")
        pages = [page.extract_text() for page in reader.pages]
    except InvalidRequestError:
        raise
    except Exception as err:  # noqa: BLE001 - a parser of untrusted bytes: any failure is a 400
        log.info("unreadable PDF at %s: %r", where, err)
        raise InvalidRequestError(f"{where}: the PDF could not be read ({err})") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise InvalidRequestError(f"{where}: the PDF has no text layer (scanned pages?); this "
                                  "server reads a PDF's text only")
    return text


def _search_result_text(block: SearchResultBlock) -> str:
    body = "\n".join(part.text for part in block.content)
    return "\n".join(["<search_result>", f"<source>{block.source}</source>",
                      f"<title>{block.title}</title>", body, "</search_result>"])
