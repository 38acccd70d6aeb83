"""Great Expectations Data Docs for one validation run, as a single HTML file.

GX builds Data Docs as a static site (an index page, a page per suite and per validation run,
shared static assets) from a file-backed context. A KFP ``HTML`` artifact is one file shown
inline, so this renders just the validation-results page with GX's own renderer
(``ValidationResultsPageRenderer``) and Jinja view (``DefaultJinjaPageView``), and makes it
stand on its own:

- links and images that point into the rest of a Data Docs site (home, the suite page, the
  favicon) are replaced, since there is no site around the file, and so is the navbar logo,
  which GX loads from its own asset bucket (with a timestamp) each time the page is opened;
- a first section, in GX's own content blocks, gives ctpipe's verdict and lists the failures
  with their severity (blocking / warning) and message, what was skipped and what was
  quarantined (GX 1.x's per-expectation ``meta_properties_to_render`` column fails validation of
  the expectation, so severities are not a column of GX's tables);
- GX's page loads Bootstrap, Font Awesome and jQuery from public CDNs. Everything it says is
  in the HTML itself, so the page reads the same without them (an air-gapped cluster); a
  small inline stylesheet shows the pass / fail icons as text marks.
"""

from __future__ import annotations

import copy
import html
import json
import os
import re
from datetime import UTC, datetime
from typing import Any

# Must be set before great_expectations is first imported, so it never sends usage statistics.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

# Result keys only the COMPLETE format has: every unexpected value and row index. The page
# shows GX's partial lists (20 values); the full lists would make it grow with the data.
_COMPLETE_ONLY = ("unexpected_list", "unexpected_index_list", "unexpected_index_query")

# GX's status icons are Font Awesome glyphs, blank without its CDN stylesheet: show text marks
# instead (more specific than Font Awesome's own rules, so the same with or without it).
_ICON_CSS = """
.fas.fa-check-circle:empty::before{content:"\\2714";font-family:inherit}
.fas.fa-times:empty::before{content:"\\2718";font-family:inherit}
.fas.fa-exclamation-triangle:empty::before{content:"\\26A0";font-family:inherit}
"""

_SITE_LINK = re.compile(r'href="(?:\.\./)+[^"]*"')
# The navbar logo (an image, and a CSS background in dark mode) comes from GX's asset bucket,
# the image with a timestamp query: a request to GX each time the page is opened.
_GX_LOGO = re.compile(r'<img\s+class="NO-CACHE"[^>]*great-expectations-web-assets[^>]*/?>', re.S)
_GX_LOGO_CSS = re.compile(r"url\('https://great-expectations-web-assets[^']*'\)")
_FAVICON = re.compile(r'<link rel="shortcut icon" href="(?:\.\./)+[^"]*"[^>]*/>')


def _escape(value: Any) -> Any:
    """A data value safe to place in HTML; GX puts unexpected values into its tables unescaped."""
    return html.escape(value) if isinstance(value, str) else value


def _renderable_result(result: dict[str, Any]) -> dict[str, Any]:
    """A GX result dict as GX's renderers need it: bounded, plain Python values, escaped strings.

    Plain values: numpy scalars pass GX's own JSON conversion (they are floats) but its number
    formatting rejects their numpy 2 ``repr``; a JSON round trip makes them Python floats.
    """
    from great_expectations.util import convert_to_json_serializable

    trimmed = {k: v for k, v in result.items() if k not in _COMPLETE_ONLY}
    plain: dict[str, Any] = json.loads(json.dumps(convert_to_json_serializable(trimmed), default=str))
    if isinstance(plain.get("partial_unexpected_list"), list):
        plain["partial_unexpected_list"] = [_escape(v) for v in plain["partial_unexpected_list"]]
    if isinstance(plain.get("partial_unexpected_counts"), list):
        plain["partial_unexpected_counts"] = [
            {**c, "value": _escape(c.get("value"))} if isinstance(c, dict) else c
            for c in plain["partial_unexpected_counts"]
        ]
    return plain


def render_validation_page(
    results: list[Any],
    severities: list[str],
    suite_name: str,
    source: str,
    summary: list[tuple[str, list[list[str]]]],
    run_time: datetime | None = None,
) -> str:
    """Render GX validation results as one self-contained Data Docs page.

    Args:
        results: GX ``ExpectationValidationResult`` objects, in the order to show them (GX
            groups them by column). They are copied, not changed.
        severities: ctpipe's severity (``blocking`` / ``warning``) of each result.
        suite_name: The expectation suite's name.
        source: The name of the validated data, shown as GX's data asset.
        summary: ctpipe tables shown first, as (title, rows) with the header row first; a
            table with no rows under its header is left out.
        run_time: When the validation ran; default now.

    Returns:
        The HTML document.
    """
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.render import (
        RenderedSectionContent,
        RenderedStringTemplateContent,
        RenderedTableContent,
    )
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    if len(results) != len(severities):
        raise ValueError(f"{len(results)} results but {len(severities)} severities")
    shown = []
    for result in results:
        item = copy.deepcopy(result)
        item.result = _renderable_result(dict(item.result or {}))
        shown.append(item)
    passed = sum(bool(r.success) for r in shown)
    stamp = (run_time or datetime.now(UTC)).astimezone(UTC)
    run = ExpectationSuiteValidationResult(
        success=not any(not r.success and s == "blocking" for r, s in zip(shown, severities, strict=True)),
        results=shown,
        suite_name=suite_name,
        statistics={
            "evaluated_expectations": len(shown),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(shown) - passed,
            "success_percent": 100.0 * passed / len(shown) if shown else 100.0,
        },
        meta={
            "run_id": {"run_name": "validate", "run_time": stamp.isoformat()},
            "batch_spec": {"data_asset_name": source},
        },
    )
    document = ValidationResultsPageRenderer().render(run)

    blocks: list[Any] = [
        RenderedStringTemplateContent(
            content_block_type="string_template",
            string_template={"template": "ctpipe", "tag": "h5", "styling": {"classes": ["m-0"]}},
        )
    ]
    for title, rows in summary:
        if len(rows) < 2:  # a header only: nothing to show
            continue
        blocks.append(
            RenderedTableContent(
                header=RenderedStringTemplateContent(
                    content_block_type="string_template",
                    string_template={"template": title, "tag": "h6", "styling": {"classes": ["m-0"]}},
                ),
                header_row=[html.escape(cell) for cell in rows[0]],
                table=[[html.escape(cell) for cell in row] for row in rows[1:]],
                styling={"classes": ["col-12", "table-responsive", "mt-1"], "body": {"classes": ["table", "table-sm"]}},
            )
        )
    document.sections.insert(0, RenderedSectionContent(content_blocks=blocks, section_name="ctpipe"))

    page: str = DefaultJinjaPageView().render(document, show_how_to_buttons=False)
    # No Data Docs site around this file: links into it would be dead.
    page = _FAVICON.sub("", page)
    page = _SITE_LINK.sub('href="#"', page)
    page = _GX_LOGO.sub("<b>Great Expectations</b>", page)
    page = _GX_LOGO_CSS.sub("none", page)
    return page.replace("</head>", f"<style>{_ICON_CSS}</style></head>", 1)
