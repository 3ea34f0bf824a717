"""feedparser's full result for each file, as comparable text: run alone, it leaves feedparser
untuned, so that ``test_parse_tuning`` can compare a tuned process with an untuned one.

``python tests/feedparser_results.py`` reads a JSON list of ``[path, content_location]`` on stdin
and prints a JSON object of ``"content_location path"`` -> the result's canonical form.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any


def canonical(value: Any) -> Any:
    """Every key, value and type of a result, exceptions by type and message."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return {"": type(value).__name__, **{str(k): canonical(v) for k, v in items}}
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, *(canonical(v) for v in value)]
    if isinstance(value, BaseException):
        return ["exception", type(value).__name__, str(value)]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    return repr(value)


def results(jobs: list[tuple[str, str]]) -> dict[str, Any]:
    import feedparser

    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # feedparser's deprecation notes on 'updated'
        for path, location in jobs:
            body = Path(path).read_bytes()
            result = feedparser.parse(
                io.BytesIO(body),
                response_headers={"content-location": location} if location else None,
                sanitize_html=False,
                resolve_relative_uris=False,
            )
            out[f"{location} {path}"] = canonical(dict(result))
    return out


if __name__ == "__main__":
    json.dump(results(json.load(sys.stdin)), sys.stdout)
