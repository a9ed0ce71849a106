"""Slugs: names and labels made from free text (a workflow or sheet stem, a URL, a prompt, a cell)."""

import re
import unicodedata

_NAME_CHARS = 63  # BATCH_NAME_PATTERN (`models.py`) and SERVER_NAME_PATTERN (`blocks/server.py`) allow 63


def name_slug(text: str, *, fallback: str) -> str:
    """`text` as a batch or server name: lowercase letters and digits joined by dashes, at most 63 characters;
    `fallback` when nothing of it is left (`"Spring Catalog.csv"` -> `spring-catalog-csv`)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:_NAME_CHARS] or fallback


def label_slug(text: str, *, max_words: int = 6, max_chars: int = 40) -> str:
    """A short file-name label from free text: accents folded to ASCII, whole words joined by dashes (`"A café at
    dusk, 35mm"` -> `a-cafe-at-dusk-35mm`); empty when no letter or digit is left."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    words = re.findall(r"[a-z0-9]+", plain)[:max_words]
    slug = words[0][:max_chars] if words else ""
    for word in words[1:]:
        if len(slug) + 1 + len(word) > max_chars:
            break
        slug += f"-{word}"
    return slug
