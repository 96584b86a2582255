"""The report in a real browser: Debian's chromium, headless, opening index.html from disk with no network.

Checks that every image decodes (naturalWidth > 0, read through an iframe by a test-only wrapper page, since the
report itself allows no script), that the console stays silent (a blocked fetch would be logged there as a
Content-Security-Policy violation), and that the page renders (the screenshot holds the plots' colours). A copy of
the report with a corrupt image and an external one shows that these checks do catch both.
Skipped where chromium is not installed: `apt-get install -y chromium`.
"""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.report.page import write_report
from test_report import make_sweep

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

# No network, no first-run or background services; root in a container needs --no-sandbox.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
WRAPPER = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><pre id="result">pending</pre>
<iframe id="report" src="{report}" width="1200" height="800"></iframe>
<iframe id="broken" src="{broken}" width="1200" height="800"></iframe>
<script>
window.addEventListener("load", function () {{
  var result = {{}};
  ["report", "broken"].forEach(function (id) {{
    var doc = document.getElementById(id).contentDocument;
    result[id] = {{title: doc.title, text: doc.body.innerText.length,
                  images: Array.from(doc.images).map(function (im) {{
                    return {{src: im.getAttribute("src").slice(0, 22), width: im.naturalWidth, done: im.complete}};
                  }})}};
  }});
  document.getElementById("result").textContent = JSON.stringify(result);
}});
</script></body></html>
"""


def chromium(tmp: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True,
                          text=True, timeout=120)


def console(stderr: str, page: str) -> list[str]:
    """The page's console messages (errors, CSP violations) as chromium logs them: INFO:CONSOLE… source: page."""
    return [line for line in stderr.splitlines()
            if ("CONSOLE" in line or "Uncaught" in line) and page in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    return write_report([make_sweep(root)], root / "report")


def test_every_image_decodes_and_the_console_is_silent(report, tmp_path):
    text = report.read_text()
    images = re.findall(r'src="(data:image/png;base64,[^"]*)"', text)
    # the control: one image corrupted, one external image added
    broken = text.replace(images[0], images[0][:40] + "AAAA" + images[0][-60:], 1).replace(
        "</main>", '<img src="http://example.invalid/x.png" alt="external"></main>')
    (tmp_path / "broken.html").write_text(broken)
    wrapper = tmp_path / "wrapper.html"
    wrapper.write_text(WRAPPER.format(report=html.escape(report.as_uri()),
                                      broken=html.escape((tmp_path / "broken.html").as_uri())))
    # file:// pages are separate origins; this flag lets the wrapper read its frames' documents
    done = chromium(tmp_path, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                    wrapper.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    result = json.loads(html.unescape(found.group(1)))

    page = result["report"]
    assert page["title"] == "cnnlab report: 4 runs" and page["text"] > 500
    # curves, the factor chart; for each group's best run: confusion matrix, reliability diagram, first-layer
    # weights, most confident mistakes
    assert len(page["images"]) == 2 + 2 * 4
    assert all(im["done"] and im["width"] > 100 and im["src"] == "data:image/png;base64," for im in page["images"]), \
        page["images"]
    assert console(done.stderr, "index.html") == []

    control = [im["width"] for im in result["broken"]["images"]]
    assert control[0] == 0 and control[-1] == 0 and all(w > 100 for w in control[1:-1])
    assert any("Content Security Policy" in line for line in console(done.stderr, "broken.html"))


def test_the_page_renders_with_its_plots(report, tmp_path):
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert console(done.stderr, "index.html") == []
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
    assert rgb.size == (1200, 2000)
    colours = rgb.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # text, tables and anti-aliased plots; a blank or error page has a handful

    def near(target, tolerance=40):
        return sum(n for n, c in colours if sum(abs(a - b) for a, b in zip(c, target)) < tolerance)

    # tab10's blue and orange appear only inside the embedded matplotlib figures (curves, and the factor charts'
    # dots and intervals: fewer pixels than the bars they replaced, ~1,250 orange ones at this size)
    assert near((31, 119, 180)) > 2000 and near((255, 127, 14)) > 500
