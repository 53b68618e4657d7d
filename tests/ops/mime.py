"""A strict RFC 9110 §8.3.1 media-type parser, as strict as Go's ``mime.ParseMediaType``.

Prometheus 3 parses a scrape's Content-Type with Go's parser and refuses the scrape when it fails;
Python's own header parsers are lenient (a repeated ``charset`` goes through), so the test
uses this one, which refuses what Go refuses: bad tokens, stray text, and duplicate parameters.
"""

from __future__ import annotations

import re

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\.)*"'
_MEDIA = re.compile(rf"^\s*({_TOKEN})/({_TOKEN})\s*")
_PARAM = re.compile(rf";\s*({_TOKEN})=({_TOKEN}|{_QUOTED})\s*")


class MediaTypeError(ValueError):
    pass


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """(type/subtype lowercased, parameters with lowercased names); ``MediaTypeError`` if invalid."""
    match = _MEDIA.match(value)
    if match is None:
        raise MediaTypeError(f"not a media type: {value!r}")
    media = f"{match.group(1)}/{match.group(2)}".lower()
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(value):
        param = _PARAM.match(value, pos)
        if param is None:
            raise MediaTypeError(f"invalid parameter at {value[pos:]!r}")
        name, raw = param.group(1).lower(), param.group(2)
        if name in params:
            raise MediaTypeError(f"duplicate parameter name {name!r}")
        params[name] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = param.end()
    return media, params
