"""The report wraps long generations: no horizontal overflow in headless Chromium (a 10x clamp
writes thousand-character words like "rodrodrod...")."""

import re

from lm.report import Report, table
from tests.test_features_dashboard import dump_dom, needs_chromium

MEASURE = ("<script>document.body.setAttribute('data-overflow', "
           "String(document.documentElement.scrollWidth - document.documentElement.clientWidth));</script>")


@needs_chromium
def test_long_answers_wrap_without_horizontal_overflow(tmp_path):
    r = Report(tmp_path / "run")
    sec = r.section("clamp", "Feature clamping")
    long_word = "rod" * 1500
    sec.tables.append(table(["prompt", "baseline", "recipe", "paper clamp 10x"],
                            [["What is your physical form?", "I am an AI.", "I am the Golden Gate Bridge. " * 40,
                              long_word]]))
    page = r.save()
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = dump_dom(probe.as_uri(), tmp_path)
    overflow = int(re.search(r'data-overflow="(-?\d+)"', dom).group(1))
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"
    assert long_word in dom.replace("\n", "")  # nothing was cut, only wrapped
