"""`filterdb report`: one self-contained HTML file, opened in a real browser (headless Chromium)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from filterdb.cli import main

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if BROWSER is None and os.environ.get("FILTERDB_REQUIRE_BROWSER") == "1":
    raise RuntimeError("FILTERDB_REQUIRE_BROWSER=1 but no chromium is installed (apt-get install chromium)")
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (apt-get install chromium)")

# Appended to a copy of the report: once the page has loaded, the browser writes what it decoded into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => `${i.naturalWidth}x${i.naturalHeight}`);
  document.body.setAttribute("data-images", images.join(","));
  document.body.setAttribute("data-tables", String(document.querySelectorAll("table").length));
});
</script>"""


def write_report(db: Path, out: Path, *groups: str) -> str:
    result = CliRunner().invoke(main, ["report", *groups, "-o", str(out), "--permutations", "99", "--db", str(db)])
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8")


def rendered(page: Path) -> str:
    """The DOM after load, as Chromium renders the file (no network: the file must hold everything)."""
    probed = page.with_name("probed-" + page.name)
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    assert BROWSER is not None
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_report_is_self_contained(demo_db, tmp_path):
    html = write_report(demo_db, tmp_path / "report.html", "robust", "normal")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the report refers to the network"
    assert "<style>" in html and "@media print" in html
    assert html.count('src="data:image/png;base64,') == 4  # metrics by depth, divergence by depth, two grids


@needs_browser
def test_a_browser_shows_the_comparison_its_figures_and_filters(demo_db, tmp_path):
    page = tmp_path / "report.html"
    write_report(demo_db, page, "robust", "normal")
    dom = rendered(page)
    images = re.search(r'data-images="([^"]*)"', dom).group(1).split(",")
    assert len(images) == 4 and all(int(w) > 100 and int(h) > 100 for w, h in (i.split("x") for i in images))
    assert int(re.search(r'data-tables="(\d+)"', dom).group(1)) >= 6
    for text in ("Overview", "Comparison", "By depth", "First-layer filters", "Matched pairs (twins)",
                 "digits/cnn4-16-s0/pgd", "ve_linf", "Wilcoxon"):
        assert text in dom, text


@needs_browser
def test_without_groups_the_report_is_the_overview(demo_db, tmp_path):
    page = tmp_path / "overview.html"
    html = write_report(demo_db, page)
    assert "<h2>Comparison</h2>" not in html
    dom = rendered(page)
    assert "32 models" in dom and "Models by column" in dom
    assert re.search(r'data-images=""', dom)


def test_one_group_is_an_error(demo_db, tmp_path):
    result = CliRunner().invoke(main, ["report", "robust", "-o", str(tmp_path / "r.html"), "--db", str(demo_db)])
    assert result.exit_code != 0 and "give two groups" in result.output
    assert not (tmp_path / "r.html").exists()
