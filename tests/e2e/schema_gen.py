"""Seeded random JSON schemas for tool inputs: the shapes real tools take."""
from __future__ import annotations

import random

NAMES = ["city", "count", "query", "unit", "start", "tags", "limit", "user", "mode", "items",
         "price", "verbose", "email", "code", "when", "options", "level", "title"]


def tool_schema(seed: int) -> dict:
    """An object schema: nested objects, bounded arrays, enums, ranges, patterns, optionals."""
    rng = random.Random(seed)
    return _object(rng, depth=0)


def _object(rng: random.Random, depth: int) -> dict:
    names = rng.sample(NAMES, rng.randint(1, 4))
    properties = {name: _value(rng, depth + 1) for name in names}
    required = [n for n in names if rng.random() < 0.6] or names[:1]
    return {"type": "object", "properties": properties, "required": required}


def _value(rng: random.Random, depth: int) -> dict:
    kinds = ["string", "pattern", "enum", "integer", "number", "boolean", "array", "format"]
    if depth < 3:
        kinds.append("object")
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(4, 24),
                "description": "a short value"}
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice(
            [r"^[A-Z]{3}$", r"^[a-z]+-[0-9]{2}$", r"^\d{4}-\d{2}-\d{2}$"])}
    if kind == "enum":
        return {"enum": rng.sample(["low", "medium", "high", "celsius", "fahrenheit", "on",
                                    "off"], rng.randint(2, 4))}
    if kind == "integer":
        low = rng.randint(-10, 10)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 500)}
    if kind == "number":
        return {"type": "number", "minimum": 0, "maximum": rng.choice([1, 100, 1e6])}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "format":
        return {"type": "string", "format": rng.choice(["date", "date-time", "uuid"])}
    if kind == "array":
        low = rng.randint(0, 2)
        return {"type": "array", "items": _value(rng, depth + 1), "minItems": low,
                "maxItems": low + rng.randint(1, 3)}
    return _object(rng, depth)
