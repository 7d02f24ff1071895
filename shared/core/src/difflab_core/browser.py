"""Render a report in headless Chromium and read back what a reader would see.

Used by the apps' end-to-end tests: every ``<img>`` must load, and the ``figure | value`` table must show the
figures of ``report.json``. Chromium is optional; `find_chromium` returns ``None`` when it is not installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DifflabError

_PROBE = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const loaded = images.filter((im) => im.complete && im.naturalWidth > 0).length;
  const table = [...document.querySelectorAll("table")].find(
    (t) => [...t.querySelectorAll("th")].map((th) => th.textContent).join("|") === "figure|value");
  const figures = {};
  if (table) {
    for (const tr of table.querySelectorAll("tbody tr")) {
      const td = tr.querySelectorAll("td");
      figures[td[0].textContent] = td[1].textContent;
    }
  }
  const out = document.createElement("pre");
  out.id = "difflab-probe";
  out.textContent = JSON.stringify({images: images.length, loaded: loaded, figures: figures,
                                    polylines: document.querySelectorAll("svg polyline").length,
                                    tables: document.querySelectorAll("table").length});
  document.body.appendChild(out);
});
</script>
"""


@dataclass
class RenderedPage:
    """What the browser saw after ``load``: image counts, the figure table (name → shown text), SVG lines."""

    images: int
    loaded: int
    polylines: int
    tables: int
    figures: dict[str, str] = field(default_factory=dict)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render_report(html_path: str | os.PathLike[str], work_dir: str | os.PathLike[str]) -> RenderedPage:
    """Load ``html_path`` in headless Chromium (``work_dir`` holds the probe page and the browser's HOME)."""
    browser = find_chromium()
    if browser is None:
        raise DifflabError("render_report: no Chromium found (install Debian's `chromium`)")
    page = Path(html_path).read_text()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    probe = Path(html_path).with_name(Path(html_path).stem + ".probe.html")
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    try:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom"]
        dom = subprocess.run(
            [browser, *flags, probe.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=180,
            env=dict(os.environ, HOME=str(work)),
            check=True,
        ).stdout
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r'<pre id="difflab-probe">(.*?)</pre>', dom, re.S)
    if match is None:
        raise DifflabError(f"render_report: {html_path} did not finish loading in Chromium")
    return RenderedPage(**json.loads(html.unescape(match.group(1))))


def shown_figures(figures: dict) -> dict[str, str]:
    """How `report.HtmlReport.figures` prints nested ``figures`` (dotted names; floats to 4 significant digits).

    An independent restatement of the report's formatting, for tests comparing the page with ``report.json``.
    """
    out: dict[str, str] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif not isinstance(v, list):
                out[f"{prefix}{k}"] = _cell(v)

    walk(figures, "")
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
