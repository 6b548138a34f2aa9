"""Languages people read: English in the code, Simplified Chinese from a gettext catalog.

Catalogs are Babel `.po` files under roomd/locale/; they are compiled in memory when first
used (Babel's own reader and writer), so no compiled `.mo` file needs to be kept in step.
`pybabel extract -F babel.cfg -o roomd/locale/roomd.pot .` collects the messages; the test
suite fails when a message in the code or a template has no Chinese translation.
"""

from __future__ import annotations

import gettext
import io
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "zh-CN")
DOMAIN = "roomd"


def N_(message: str) -> str:
    """Marks a message for the catalog where it is defined; translated where it is shown."""
    return message


def extract_profile_labels(
    fileobj: Any, keywords: Any, comment_tags: Any, options: Any
) -> Iterator[tuple[int, str, str, list[str]]]:
    """A Babel extractor for the profiles' `label:`s (people read them in alerts and
    notifications), so that the catalog has them: see babel.cfg."""
    data = yaml.safe_load(fileobj) or {}
    for metric, threshold in sorted((data.get("thresholds") or {}).items()):
        if isinstance(threshold, dict) and isinstance(threshold.get("label"), str):
            yield 0, "_", threshold["label"], [f"profile label of {metric}"]


Path_ = tuple[str | int, ...]


def dashboard_texts(model: dict[str, Any]) -> Iterator[tuple[Path_, str]]:
    """What a person reads on a Grafana dashboard: its title, panel titles and descriptions,
    variable labels, annotation names, value-mapping texts and link titles, with where each
    is in the model (scripts/translate-dashboards writes the Chinese copies from these)."""
    if model.get("title"):
        yield ("title",), model["title"]
    for i, panel in enumerate(model.get("panels", [])):
        for key in ("title", "description"):
            if panel.get(key):
                yield ("panels", i, key), panel[key]
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        for m, mapping in enumerate(defaults.get("mappings", [])):
            for value, option in mapping.get("options", {}).items():
                if isinstance(option, dict) and option.get("text"):
                    path = ("panels", i, "fieldConfig", "defaults", "mappings", m, "options")
                    yield (*path, value, "text"), option["text"]
        for k, link in enumerate(defaults.get("links", [])):
            yield ("panels", i, "fieldConfig", "defaults", "links", k, "title"), link["title"]
    for j, variable in enumerate(model.get("templating", {}).get("list", [])):
        if variable.get("label"):
            yield ("templating", "list", j, "label"), variable["label"]
    for k, annotation in enumerate(model.get("annotations", {}).get("list", [])):
        for key in ("name", "titleFormat", "textFormat"):
            if annotation.get(key):
                yield ("annotations", "list", k, key), annotation[key]


def extract_dashboard_texts(
    fileobj: Any, keywords: Any, comment_tags: Any, options: Any
) -> Iterator[tuple[int, str, str, list[str]]]:
    """A Babel extractor for the dashboards' texts (see babel.cfg)."""
    for path, text in dashboard_texts(json.load(fileobj)):
        yield 0, "_", text, [".".join(str(p) for p in path)]


def _locale_name(language: str) -> str:
    return language.replace("-", "_")


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog for `language` ("en" or "zh-CN"); English (no catalog) for anything else."""
    path = LOCALE_DIR / _locale_name(language) / "LC_MESSAGES" / f"{DOMAIN}.po"
    if language == "en" or not path.exists():
        return gettext.NullTranslations()
    with path.open("rb") as f:
        catalog = read_po(f, locale=_locale_name(language), domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(buffer, domain=DOMAIN)
