"""features/dashboard.py: static pages, index search, and rendering in headless Chromium."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from features.analysis import AnalysisConfig, analyze
from features.dashboard import histogram_svg, show, write_dashboards
from features.testing import random_sae
from lm.corpus import PROMPT_BANK
from lm.text import pack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed; the CI setup installs "
                                    "Debian's package: apt-get install -y chromium")


@pytest.fixture(scope="module")
def stats(tiny):
    tok = tiny.tokenizer
    prompts = [json.loads(line)["prompt"] for line in PROMPT_BANK.read_text().splitlines()[:60]]
    seqs = [np.asarray(tok(p, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")])
            for p in prompts]
    sae = random_sae(64, 32, "blocks.1.hook_resid_post", k=4, seed=1)
    return analyze(tiny, sae, pack(seqs, 40), AnalysisConfig(n_examples=6, n_random=2, left=8, right=3), progress=False)


@pytest.fixture(scope="module")
def dash(stats, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("dash")
    feats = [int(i) for i in stats.t["n_active"].argsort(descending=True)[:4]]
    write_dashboards(stats, tiny.tokenizer, out, features=feats, progress=False)
    return out, feats


def strip_tags(s: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", s))


def test_pages_and_index(stats, tiny, dash):
    out, feats = dash
    assert sorted(int(p.stem) for p in (out / "features").glob("*.html")) == sorted(feats)
    index = (out / "index.html").read_text()
    assert re.findall(r'<a href="features/(\d+)\.html">', index) == [str(i) for i in feats]  # densest first
    i = feats[0]
    page = (out / "features" / f"{i}.html").read_text()
    assert html.escape(stats.labels[i], quote=False) in page
    top = page.split('id="top-examples"')[1].split("</div>\n</div>")[0]
    assert top.count('class="example"') == len(stats.examples(i)) > 0
    assert "<|im_end|>" not in page  # special tokens are escaped text, not tags
    promoted = show(tiny.tokenizer, int(stats.t["logit_pos_ids"][i, 0]))
    assert html.escape(promoted, quote=False) in page
    assert page.count('<rect class="bar"') >= 1


def test_histogram_svg_spans_non_empty_bins():
    edges = [0.1, 1.0, 10.0, 100.0]
    svg = histogram_svg([0, 0, 3, 0, 5], edges)  # bins: under, [0.1,1), [1,10), [10,100), over
    assert svg.count('<rect class="bar"') == 3 and ">1<" in svg and ">100<" in svg
    assert "no activations" in histogram_svg([0, 0, 0], [1.0, 2.0])


def test_bad_feature_index(stats, tiny, tmp_path):
    with pytest.raises(IndexError, match="out of range.*d_sae=32"):
        write_dashboards(stats, tiny.tokenizer, tmp_path, features=[0, 32], progress=False)


def dump_dom(url: str, tmp_path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@needs_chromium
def test_chromium_renders_top_examples(stats, tiny, dash, tmp_path):
    out, feats = dash
    i = feats[0]
    dom = dump_dom((out / "features" / f"{i}.html").as_uri(), tmp_path)
    top = dom.split('id="top-examples"')[1].split('<h2>')[0]
    rendered = re.findall(r'<div class="example">(.*?)</div>', top, re.S)
    examples = stats.examples(i)
    assert len(rendered) == len(examples)
    for r, e in zip(rendered, examples):  # every token in order, after the value column
        spans = re.findall(r'<span class="tok( peak)?"[^>]*>(.*?)</span>', r, re.S)
        assert [html.unescape(t) for _, t in spans] == [show(tiny.tokenizer, t) for t in e["tokens"]]
        assert [k for k, (p, _) in enumerate(spans) if p] == [e["center"]]  # the peak token is marked
        assert f'title="{e["value"]:.4g}"' in r
    assert '<svg class="hist"' in dom and strip_tags(dom).count("Feature %d" % i) >= 1


@needs_chromium
def test_chromium_index_search_filters(stats, dash, tmp_path):
    out, feats = dash
    word = stats.labels[feats[-1]].split()[0].lower()
    dom = dump_dom((out / "index.html").as_uri() + "?q=" + word, tmp_path)
    rows = re.findall(r'<tr data-search="([^"]*)"( style="display: none;")?>', dom)
    assert len(rows) == len(feats)
    shown = [s for s, hidden in rows if not hidden]
    assert shown and all(word in html.unescape(s) for s in shown)
    assert all(word not in html.unescape(s) for s, hidden in rows if hidden)
    assert f"{len(shown)} of {len(feats)} shown" in dom
