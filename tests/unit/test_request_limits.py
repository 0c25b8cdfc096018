"""How deep a JSON body nests is counted before parsing it, without being fooled by
brackets inside strings (the answers at the edges are in
tests/db/test_request_limits.py)."""

from __future__ import annotations

from app import json_depth


def test_json_depth_skips_brackets_inside_strings():
    assert json_depth(b'{"a": [1, {"b": "]]]]{{{{"}]}') == 3
    assert json_depth(b'"\\"[[["') == 0
