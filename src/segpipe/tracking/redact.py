"""Keep secrets out of what segpipe writes: credentials in URIs are masked before they reach files or logs."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_KEYS = re.compile(r"token|secret|password|passwd|key|signature|sig|credential|auth", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` and secret-looking query values (``?token=...``) replaced by
    ``***``."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        query = urlencode(
            [
                (key, MASK if _SECRET_KEYS.search(key) else value)
                for key, value in parse_qsl(query, keep_blank_values=True)
            ],
            safe="*",
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing secret (and urlunsplit would rewrite e.g. sqlite:///x as sqlite:/x)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
