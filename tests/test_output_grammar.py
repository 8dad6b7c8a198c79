"""Tools, tool_choice and output formats -> the grammar a reply is held to, and the 400s."""
import json

import llguidance
import pytest

from preheat.server.errors import InvalidRequestError
from preheat.server.output_grammar import plan_output
from preheat.server.protocol import MessagesRequest
from preheat.server.tool_format import HERMES, LLAMA3_JSON, form_for_template
from tiny import byte_grammar_tokenizer

WEATHER = {"name": "weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]}}
TIME = {"name": "time", "input_schema": {"type": "object", "properties": {}}}
LOOKUP = {"name": "lookup", "input_schema": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


def request(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({
        "model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
        **fields})


def accepts(grammar: str, text: str) -> bool:
    """Whether ``text`` is a whole reply the grammar allows."""
    matcher = llguidance.LLMatcher(byte_grammar_tokenizer(), grammar)
    ids = list(text.encode())
    if matcher.validate_tokens(ids) != len(ids):
        return False
    matcher.consume_tokens(ids)
    return matcher.is_accepting()


def error_of(**fields) -> str:
    with pytest.raises(InvalidRequestError) as info:
        plan_output(request(**fields))
    return str(info.value)


OSLO = HERMES.render("weather", {"city": "Oslo"})
TWO_CALLS = OSLO + "\n" + HERMES.render("lookup", {"q": "fjords"})


def test_forced_calls_allow_calls_only():
    plan = plan_output(request(tools=[WEATHER, LOOKUP], tool_choice={"type": "any"}))
    assert plan.tool_calls and plan.calls_only
    assert accepts(plan.grammar, OSLO) and accepts(plan.grammar, TWO_CALLS)
    assert not accepts(plan.grammar, "Sure! " + OSLO)
    assert not accepts(plan.grammar, OSLO.replace('"Oslo"', "42"))  # city must be a string
    assert not accepts(plan.grammar, OSLO.replace('{"city"', '{"town"'))  # required key
    assert not accepts(plan.grammar, HERMES.render("weather", {"city": "Oslo", "extra": 1}))
    assert not accepts(plan.grammar, HERMES.render("nope", {}))
    assert not accepts(plan.grammar, OSLO[:-3])  # unfinished


def test_disable_parallel_tool_use_allows_one_call():
    plan = plan_output(request(tools=[WEATHER, LOOKUP],
                               tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert accepts(plan.grammar, OSLO) and not accepts(plan.grammar, TWO_CALLS)


def test_a_named_tool_choice_allows_that_tool_only():
    plan = plan_output(request(tools=[WEATHER, LOOKUP], tool_choice={"type": "tool",
                                                                    "name": "lookup"}))
    assert accepts(plan.grammar, HERMES.render("lookup", {"q": "x"}))
    assert not accepts(plan.grammar, OSLO)


def test_auto_allows_text_then_calls_and_holds_a_started_call_to_its_schema():
    plan = plan_output(request(tools=[WEATHER, LOOKUP, TIME]))
    assert plan.tool_calls and not plan.calls_only
    assert accepts(plan.grammar, "The weather is fine.\nNo tool needed.")
    assert accepts(plan.grammar, "Let me look.\n" + TWO_CALLS)
    assert accepts(plan.grammar, HERMES.render("time", {}))
    assert not accepts(plan.grammar, "Let me look.\n<tool_call>\n{not json")
    assert not accepts(plan.grammar, OSLO + "\nand some text after the call")


def test_llama3_models_call_in_their_own_form():
    call = LLAMA3_JSON.render("weather", {"city": "Oslo"})
    assert call == '{"name": "weather", "parameters": {"city": "Oslo"}}'
    forced = plan_output(request(tools=[WEATHER], tool_choice={"type": "any"}), LLAMA3_JSON)
    assert accepts(forced.grammar, call) and not accepts(forced.grammar, OSLO)
    auto = plan_output(request(tools=[WEATHER]), LLAMA3_JSON)
    assert accepts(auto.grammar, "Checking.\n" + call)
    assert not accepts(auto.grammar, 'Checking. {"name": "weather", "parameters": 3}')


def test_the_form_follows_the_chat_template():
    llama3 = ('{{- \'{"name": "\' + tool_call.name + \'", \' }}{{- \'"parameters": \' }}'
              "{{- tool_call.arguments | tojson }}{{- '}' }}{{- '<|eot_id|>' }}")
    assert form_for_template(llama3) is LLAMA3_JSON
    assert form_for_template(None) is HERMES
    assert form_for_template("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}") \
        is HERMES


def test_tool_choice_none_and_no_tools_are_free_text():
    assert plan_output(request(tools=[WEATHER], tool_choice={"type": "none"})).grammar is None
    assert plan_output(request()).grammar is None


def test_structured_output_allows_valid_json_only():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9},
                                               "s": {"type": "string", "format": "text"}},
              "required": ["n"]}
    plan = plan_output(request(output_config={"format": {"type": "json_schema",
                                                         "schema": schema}}))
    assert not plan.tool_calls
    assert accepts(plan.grammar, '{"n": 3, "s": "hi"}') and accepts(plan.grammar, '{"n": 3}')
    assert not accepts(plan.grammar, '{"n": 30}')
    assert not accepts(plan.grammar, '{"n":3}')  # spaced as json.dumps spaces it
    assert not accepts(plan.grammar, 'Here: {"n": 3}')


def test_structured_output_with_auto_tools_is_json_or_calls():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"]}
    plan = plan_output(request(tools=[WEATHER], output_config={
        "format": {"type": "json_schema", "schema": schema}}))
    assert accepts(plan.grammar, '{"answer": "sunny"}') and accepts(plan.grammar, OSLO)
    assert not accepts(plan.grammar, "sunny")


def test_objects_without_a_word_on_other_keys_get_none_but_allof_branches_stay_open():
    schema = {"type": "object", "properties": {
        "properties": {"type": "object", "properties": {"a": {"type": "integer"}}},
        "open": {"type": "object", "properties": {"b": {"type": "integer"}},
                 "additionalProperties": True},
        "both": {"allOf": [{"type": "object", "properties": {"c": {"type": "integer"}}},
                           {"type": "object", "properties": {"d": {"type": "integer"}}}]}}}
    grammar = plan_output(request(output_config={"format": {"type": "json_schema",
                                                            "schema": schema}})).grammar
    assert accepts(grammar, '{"properties": {"a": 1}, "open": {"b": 1, "z": 2}}')
    assert not accepts(grammar, '{"properties": {"a": 1, "z": 2}}')
    assert not accepts(grammar, '{"extra": 1}')
    assert accepts(grammar, '{"both": {"c": 1, "d": 2}}')


@pytest.mark.parametrize(("fields", "expected"), [
    ({"tools": [{"name": "t", "input_schema": {"type": "object", "properties": {
        "a": {"type": "strng"}}}}]},
     "tools.0.input_schema.properties.a.type: invalid JSON schema: "),
    ({"tools": [{"name": "t", "input_schema": {"type": "object", "required": "a"}}]},
     "tools.0.input_schema.required: invalid JSON schema: "),
    ({"tools": [{"name": "t", "input_schema": {"type": "array"}}]},
     "tools.0.input_schema.type: Input should be 'object'"),
    ({"tools": [WEATHER, {"name": "t", "strict": True, "input_schema": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}]},
     'tools.1.input_schema: this JSON schema uses features that constrained decoding cannot '
     'enforce: Unimplemented keys: ["not"]'),
    ({"output_config": {"format": {"type": "json_schema", "schema": {
        "type": "object", "propertyNames": {"pattern": "^a"}}}}},
     'output_config.format.schema: this JSON schema uses features that constrained decoding '
     'cannot enforce: Unimplemented keys: ["propertyNames"]'),
    ({"tools": [{"name": "t", "input_schema": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "(?=x)"}}}}]},
     "tools.0.input_schema: this JSON schema uses features that constrained decoding cannot "
     "enforce: regex parse error"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {
        "type": "string", "format": "weird"}}}},
     "output_config.format.schema: this JSON schema uses features that constrained decoding "
     "cannot enforce: Unknown format: weird"),
    ({"output_config": {"format": {"type": "regex", "schema": {}}}},
     "output_config.format.type: Input should be 'json_schema'"),
    ({"output_config": {"format": {"type": "json_schema"}}},
     "output_config.format.schema: Input should be a JSON object"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "missing"}},
     "tool_choice.name: no tool named 'missing' in tools"),
    ({"tool_choice": {"type": "any"}}, "tool_choice: 'any' needs at least one tool"),
])
def test_bad_and_unsupported_schemas_are_400s_that_say_where(fields, expected):
    assert error_of(**fields).startswith(expected)


def test_a_plain_tool_is_held_to_its_schema_without_the_keywords_the_grammar_cant_enforce():
    # Claude Code's tools use propertyNames; Anthropic holds a non-strict tool to no schema
    tool = {"name": "edit", "input_schema": {"type": "object", "properties": {
        "not": {"type": "integer"},  # a property named like a keyword is a name: it stays
        "env": {"type": "object", "propertyNames": {"pattern": "^[A-Z]+$"},
                "additionalProperties": {"type": "string"}},
        "mode": {"type": "string", "not": {"const": "x"}}},
        "required": ["not", "env", "mode"]}}
    grammar = plan_output(request(tools=[tool], tool_choice={"type": "any"})).grammar
    assert accepts(grammar, HERMES.render("edit", {"not": 1, "env": {"HOME": "/"}, "mode": "a"}))
    assert accepts(grammar, HERMES.render("edit", {"not": 1, "env": {"lower": "/"}, "mode": "x"}))
    assert not accepts(grammar, HERMES.render("edit", {"not": "1", "env": {}, "mode": "a"}))
    assert not accepts(grammar, HERMES.render("edit", {"not": 1, "env": {"A": 2}, "mode": "a"}))


def prefix_allowed(grammar: str, text: str) -> bool:
    """Whether a reply may start with ``text``."""
    ids = list(text.encode())
    return llguidance.LLMatcher(byte_grammar_tokenizer(), grammar).validate_tokens(ids) == len(ids)


CITY = {"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                                         "area": {"type": "number"}},
        "required": ["name", "population", "area"]}


def test_numbers_the_schema_does_not_bound_still_end():
    grammar = plan_output(request(output_config={"format": {"type": "json_schema", "schema": CITY}})).grammar
    assert accepts(grammar, '{"name": "Paris", "population": 2102650, "area": 105.4}')
    assert accepts(grammar, '{"name": "P", "population": -999999999999999999, "area": -0.0000000001}')
    assert not prefix_allowed(grammar, '{"name": "Paris", "population": ' + "1" * 19)  # past int64
    assert not prefix_allowed(grammar, '{"name": "Paris", "population": 1, "area": ' + "1" * 17)
    assert not prefix_allowed(grammar, '{"name": "Paris", "population": 1, "area": 3.' + "1" * 11)


def test_a_schema_s_own_bounds_and_steps_win():
    schema = {"type": "object", "properties": {
        "big": {"type": "integer", "minimum": 10**17},
        "tiny": {"type": "number", "multipleOf": 0.25, "maximum": 1}}, "required": ["big", "tiny"]}
    grammar = plan_output(request(output_config={"format": {"type": "json_schema", "schema": schema}})).grammar
    assert accepts(grammar, '{"big": 100000000000000000, "tiny": -999999999999999.75}')
    assert not accepts(grammar, '{"big": 5, "tiny": 0.5}')
    assert not accepts(grammar, '{"big": 100000000000000000, "tiny": 0.1}')


def test_parallel_calls_must_be_distinct_and_one_call_needs_no_rule():
    assert plan_output(request(tools=[WEATHER], tool_choice={"type": "any"})).distinct_calls is not None
    single = plan_output(request(tools=[WEATHER], tool_choice={
        "type": "any", "disable_parallel_tool_use": True}))
    assert single.distinct_calls is None
    assert plan_output(request(tools=[WEATHER])).distinct_calls.opening == HERMES.trigger
