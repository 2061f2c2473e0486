"""Markdown built from user data (file names, labels, failure reasons) for the Dagster UI.

Everything that comes from a user's collection is text, never markup: each ASCII punctuation
character that can start or end inline markup is backslash-escaped (CommonMark lets any ASCII
punctuation be escaped), so ``|`` cannot split a table cell, ``![x](http://host/x.png)`` cannot
become an image fetched from elsewhere, ``<b>`` cannot become HTML, and ``http://``, ``www.``
and ``a@b`` cannot become links (GFM autolinks). Hyphens, dots, slashes and other punctuation
that is markup only at the start of a line stay as they are: these values are never at the start
of a line (table cells, alt texts). Line breaks and other control characters are shown as
``\\n``, ``\\t``, ``\\x1b``..., so a name cannot end a table row.

Markup we build ourselves (thumbnails as ``data:`` images) is a :class:`Markdown` value and
passes through unescaped.
"""

from __future__ import annotations

import re

# markup inside a line: code, emphasis, links and images, HTML and entities, tables, autolinks, math
_PUNCTUATION = frozenset("\\`*_{}[]()<>!|&~#@$")
_AUTOLINK = re.compile(r"(www)\.|:(//)", re.IGNORECASE)  # GFM's www. and scheme:// autolinks
_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Markdown(str):
    """Markdown this project made itself (not user data): used as is."""


def escape(value: object) -> str:
    """``value`` as text that Markdown renders literally (see the module docstring)."""
    if isinstance(value, Markdown):
        return str(value)
    out = []
    for char in str(value):
        code = ord(char)
        if char in _CONTROL or code < 32 or 127 <= code < 160 or char in "\u2028\u2029":
            shown = _CONTROL.get(char) or (f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}")
            out.append("\\" + shown)  # the shown escape's own backslash, escaped: text, not a break
        elif char in _PUNCTUATION:
            out.append("\\" + char)
        else:
            out.append(char)
    return _AUTOLINK.sub(lambda m: f"{m[1]}\\." if m[1] else "\\://", "".join(out))


def table(headers: tuple[str, ...], rows) -> str:
    """A GitHub-flavoured Markdown table; every cell is escaped unless it is :class:`Markdown`."""
    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def image(data_uri: str | None, alt: str) -> Markdown:
    """An inline picture (a ``data:`` URI this project made) with escaped alt text; a dash if none."""
    if not data_uri:
        return Markdown("–")
    if not data_uri.startswith("data:image/"):
        raise ValueError("only data: image URIs made by this project are inlined")
    return Markdown(f"![{escape(alt)}]({data_uri})")
