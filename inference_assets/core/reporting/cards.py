"""The report's picture cards: a thumbnail (or "no picture") over a caption, each picture made once a page.

Used by every section of the report that shows images (the gallery, the least confident, the changed
images of a model comparison, the review queue), so they look and escape alike.
"""

from __future__ import annotations

import html
from collections.abc import Callable


def escape(value: object) -> str:
    """``value`` as HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def image_name(key: str) -> str:
    """An image's name in captions: the last part of its key in the source (a file name, an object's
    last key part, a row id), whatever characters it holds (``a#b.jpg`` stays ``a#b.jpg``)."""
    return key.rstrip("/").rpartition("/")[2] or key


class Cards:
    """Makes cards with ``thumbnail(uri)`` (a data URI, or None when the image cannot be shown); an
    image on several cards is read once. ``pictures`` counts the cards that show one."""

    def __init__(self, thumbnail: Callable[[str], str | None]):
        self._thumbnail = thumbnail
        self._made: dict[str, str | None] = {}
        self.pictures = 0

    def card(self, uri: str, key: str, caption: str) -> str:
        """A card for the image at ``uri`` (``key``: its key in the source); ``caption`` is HTML already."""
        if uri not in self._made:
            self._made[uri] = self._thumbnail(uri)
        picture = self._made[uri]
        self.pictures += picture is not None
        image = (f'<img src="{escape(picture)}" alt="{escape(image_name(key))}">' if picture
                 else '<div class="bad">no picture</div>')
        return f'<div class="card" title="{escape(uri)}">{image}<br>{caption}</div>'
