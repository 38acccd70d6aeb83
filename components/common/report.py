"""Self-contained HTML reports: tables and matplotlib plots embedded as PNG data URIs.

The KFP UI shows an ``HTML`` artifact inline, and a single file with no external assets
also opens from disk or a notebook.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left}th{background:#f6f8fa}
.ok{color:#1a7f37;font-weight:600}.warn{color:#9a6700;font-weight:600}.bad{color:#cf222e;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid img{max-width:420px}
"""
# Margins of a histogram (fractions of the figure), set rather than found by cropping the image to what is
# drawn: that is a second layout pass, a third of a plot's time. They fit tick labels of up to 5 characters
# (larger and smaller numbers get an exponent) and a title of about 45 characters.
_HISTOGRAM_MARGINS = {"left": 0.14, "right": 0.97, "bottom": 0.13, "top": 0.9}


def badge(text: str, status: str) -> str:
    """A coloured word; ``status`` is 'ok', 'warn' or 'bad'."""
    return f'<span class="{status}">{html.escape(text)}</span>'


def table(frame: pd.DataFrame | Iterable[dict[str, Any]], escape: bool = True) -> str:
    """An HTML table from a DataFrame or a list of row dicts."""
    df = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(list(frame))
    return df.to_html(index=False, escape=escape, border=0, float_format=lambda v: f"{v:.4g}")


def figure(fig: Any, tight: bool = True) -> str:
    """Render a matplotlib figure as an inline ``<img>`` and close it.

    Args:
        fig: The figure.
        tight: Crop the image to what is drawn. That takes a second layout pass, about a third of
            the rendering time; a figure whose margins are set (``fig.subplots_adjust``) to fit its
            labels can do without.

    Returns:
        The ``<img>`` element with the PNG as a data URI.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight" if tight else None)
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def page(title: str, sections: Iterable[tuple[str, str]], summary: str = "") -> str:
    """A complete HTML document: a title, an optional summary paragraph, then titled sections."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if summary:
        body.append(f"<p>{summary}</p>")
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>\n{content}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>"
    )


def new_figure(width: float = 5.0, height: float = 3.2) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def histograms(title: str, edges: np.ndarray, densities: dict[str, np.ndarray | None], ylabel: str = "density") -> str:
    """Histograms on shared bin edges, overlaid, as an inline ``<img>``.

    Args:
        title: The plot's title; about 45 characters fit.
        edges: The bin edges, one more than the values of each series.
        densities: Series label to value per bin; a series that is None is left out.
        ylabel: The y axis label.

    Returns:
        The ``<img>`` element with the PNG as a data URI.
    """
    fig, ax = new_figure()
    fig.subplots_adjust(**_HISTOGRAM_MARGINS)
    ax.ticklabel_format(style="sci", scilimits=(-3, 4))
    drawn = {label: values for label, values in densities.items() if values is not None}
    # One filled outline per series instead of a patch per bin: the same picture, far cheaper to draw.
    for label, values in drawn.items():
        ax.stairs(values, edges, fill=True, alpha=0.5, label=label)
    if drawn:
        ax.legend()
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return figure(fig, tight=False)
