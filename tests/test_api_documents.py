"""Document, search_result and image blocks as the text the model reads (server/documents.py),
through the request's validation and ``model_input``."""
from __future__ import annotations

import base64
import json

import pytest
from pdf_files import pdf_with_pages

from preheat.server import documents as documents_module
from preheat.server.documents import IMAGE_PLACEHOLDER, MAX_PDF_PAGES, DocumentReader
from preheat.server.errors import InvalidRequestError
from preheat.server.model_input import model_input
from preheat.server.protocol import MessagesRequest, TextBlock, parse_request

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
CACHED = {"type": "ephemeral"}


def pdf_source(pages: list[str]) -> dict:
    return {"type": "base64", "media_type": "application/pdf",
            "data": base64.b64encode(pdf_with_pages(pages)).decode()}


def request(*content: dict, role: str = "user") -> MessagesRequest:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": role, "content": list(content)}]}
    return parse_request(MessagesRequest, json.dumps(body).encode())


def read(*content: dict, images: str = "reject") -> list:
    return model_input(request(*content), DocumentReader(images)).messages[0].content


def error_of(*content: dict, images: str = "reject", role: str = "user") -> str:
    with pytest.raises(InvalidRequestError) as err:
        model_input(request(*content, role=role), DocumentReader(images))
    return err.value.message


def test_a_text_document_is_read_with_its_title_and_context_and_keeps_its_breakpoint():
    [block] = read({"type": "document", "title": "Notes", "context": "from the wiki",
                    "citations": {"enabled": True}, "cache_control": CACHED,
                    "source": {"type": "text", "media_type": "text/plain", "data": "Line one."}})
    assert isinstance(block, TextBlock)
    assert block.text == ("<document>\n<title>Notes</title>\n<context>from the wiki</context>\n"
                          "Line one.\n</document>")
    assert block.cache_control is not None and block.cache_control.type == "ephemeral"


def test_a_content_source_joins_its_text_blocks_and_a_string_is_one_block():
    [joined] = read({"type": "document", "source": {"type": "content", "content": [
        {"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}})
    assert joined.text == "<document>\nfirst\nsecond\n</document>"
    [single] = read({"type": "document", "source": {"type": "content", "content": "only"}})
    assert single.text == "<document>\nonly\n</document>"


def test_a_pdf_is_read_page_by_page_and_pages_without_text_are_skipped():
    [block] = read({"type": "document", "title": "Report",
                    "source": pdf_source(["Revenue rose (a lot).", "", "Costs fell."])})
    assert block.text == ("<document>\n<title>Report</title>\nRevenue rose (a lot).\n\n"
                          "Costs fell.\n</document>")


def test_the_same_pdf_is_parsed_once(monkeypatch):
    calls = []
    real = documents_module.pdf_text
    monkeypatch.setattr(documents_module, "pdf_text",
                        lambda pdf, where: calls.append(where) or real(pdf, where))
    reader = DocumentReader()
    doc = {"type": "document", "source": pdf_source(["Same pages."])}
    first = model_input(request(doc), reader).messages[0].content
    second = model_input(request(doc), reader).messages[0].content
    assert first == second and len(calls) == 1
    model_input(request({"type": "document", "source": pdf_source(["Other pages."])}), reader)
    assert len(calls) == 2


@pytest.mark.parametrize("data, expected", [
    ("not base64!", "messages.0.content.0.source.data: not valid base64"),
    (base64.b64encode(b"plain bytes, no PDF").decode(),
     "messages.0.content.0.source: the PDF could not be read"),
    (base64.b64encode(pdf_with_pages(["", ""])).decode(),
     "messages.0.content.0.source: the PDF has no text layer"),
    (base64.b64encode(pdf_with_pages(["x"] * (MAX_PDF_PAGES + 1))).decode(),
     f"messages.0.content.0.source: the PDF has {MAX_PDF_PAGES + 1} pages"),
])
def test_an_unreadable_pdf_is_a_400_naming_it(data, expected):
    message = error_of({"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": data}})
    assert message.startswith(expected)


def test_a_search_result_is_read_with_its_source_and_title():
    [block] = read({"type": "search_result", "source": "https://example.com/a", "title": "A",
                    "content": [{"type": "text", "text": "alpha"}, {"type": "text", "text": "beta"}]})
    assert block.text == ("<search_result>\n<source>https://example.com/a</source>\n"
                          "<title>A</title>\nalpha\nbeta\n</search_result>")


def test_documents_and_search_results_inside_a_tool_result_are_read_too():
    [result] = read({"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "text", "text": "found:"},
        {"type": "search_result", "source": "s", "title": "T", "content": [{"type": "text", "text": "x"}]},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}]})
    assert [part.text for part in result.content] == [
        "found:", "<search_result>\n<source>s</source>\n<title>T</title>\nx\n</search_result>",
        "<document>\nd\n</document>"]


@pytest.mark.parametrize("content, where", [
    ([{"type": "text", "text": "look"}, {"type": "image", "source": PNG}], "messages.0.content.1"),
    ([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": PNG}]}],
     "messages.0.content.0.content.0"),
    ([{"type": "document", "source": {"type": "content", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}]}}],
     "messages.0.content.0.source.content.0"),
])
def test_an_image_is_a_400_naming_the_block_by_default(content, where):
    message = error_of(*content)
    assert message.startswith(f"{where}: image blocks are not supported: the served model "
                              "reads text only")
    assert "--images placeholder" in message


def test_with_placeholders_an_image_is_a_note_at_its_place_keeping_its_breakpoint():
    [text, image] = read({"type": "text", "text": "look"},
                         {"type": "image", "source": PNG, "cache_control": CACHED},
                         images="placeholder")
    assert text.text == "look"
    assert image.text == IMAGE_PLACEHOLDER and image.cache_control is not None
    [result] = read({"type": "tool_result", "tool_use_id": "t",
                     "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]},
                    images="placeholder")
    assert [part.text for part in result.content] == [IMAGE_PLACEHOLDER]


def test_a_request_without_documents_is_returned_as_it_is():
    body = request({"type": "text", "text": "plain"})
    assert model_input(body, DocumentReader()) is body


@pytest.mark.parametrize("source, expected", [
    ({"type": "url", "url": "https://example.com/a.pdf"}, "document sources of type 'url'"),
    ({"type": "file", "file_id": "file_1"}, "document sources of type 'file'"),
    ({"type": "base64", "media_type": "image/png", "data": "x"}, "media_type: Input should be"),
])
def test_sources_this_server_cannot_read_are_a_400(source, expected):
    with pytest.raises(InvalidRequestError) as err:
        request({"type": "document", "source": source})
    assert err.value.message.startswith("messages.0.content.0.source")
    assert expected in err.value.message


def test_documents_and_images_belong_to_user_turns():
    with pytest.raises(InvalidRequestError) as err:
        request({"type": "image", "source": PNG}, role="assistant")
    assert "belong to user messages (and tool results) only" in err.value.message
