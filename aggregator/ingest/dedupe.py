"""Entry identity: canonical URLs and the keys that say "seen before".

Pure functions. An entry is new only when neither its (feed, guid) nor its canonical URL has been
stored before, by any feed. Grouping different URLs of one story across outlets is ``stories.py``.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

# Query parameters that only track the reader; they never change what the page is.
TRACKING_PARAMS = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "gclsrc",
        "msclkid",
        "mc_cid",
        "mc_eid",
        "igshid",
        "yclid",
        "_hsenc",
        "_hsmi",
        "cmpid",
        "ocid",
        "smid",
        "taid",
        "ref_src",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Most links: lower-case scheme, a bare host name, a path that quoting leaves as it is, no query.
# Their canonical form needs no port, no quoting and no query rebuilt (the fragment goes anyway).
_PLAIN_LINK = re.compile(
    r"(https?)://([A-Za-z0-9.-]+)(/[A-Za-z0-9/:@!$&'()*+,;=._~-]*)?(?:#.*)?", re.S
)


def canonical_url(url: str) -> str:
    """The dedupe form of a link: lower-case scheme and host, no default port, no fragment,
    no tracking parameters (``utm_*``, ``fbclid``, ``gclid`` ...), remaining parameters sorted.

    Returns "" for anything that is not an http(s) URL.
    """
    url = url.strip()
    plain = _PLAIN_LINK.fullmatch(url)
    if plain:
        scheme: str = plain[1]
        host: str = plain[2].lower().rstrip(".")
        path: str = plain[3] or "/"
        return urlunsplit((scheme, host, path, "", ""))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return ""
    host = parts.hostname.lower().rstrip(".")
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=-._~%") or "/"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in TRACKING_PARAMS
    ]
    return urlunsplit((scheme, host, path, urlencode(sorted(query)), ""))


def content_hash(title: str, summary: str) -> str:
    """Changes whenever the title or the text of an entry changes."""
    return hashlib.sha256(f"{title}\n{summary}".encode()).hexdigest()[:32]


def body_hash(body: bytes) -> str:
    """Identifies a fetched body, so an unchanged one is never parsed twice."""
    return hashlib.sha256(body).hexdigest()
