"""Static HTML feature dashboards (one page per latent, an index with search, concept pages).

Rendered with Jinja2 rather than `sae-dashboard`: sae-dashboard 0.8 pins transformer-lens < 3,
transformers < 4.57 and datasets < 4 (installing it would downgrade our whole stack), raises on
TopK SAEs (`fold_W_dec_norm` is refused for them, and it folds norms into the SAE in place), and
its pages load d3 and plotly from CDNs, so they render blank offline. Ours are self-contained
(inline CSS, inline SVG histogram, a few lines of JS for the index search) and open from disk.
Layout follows Anthropic's and Neuronpedia's feature pages: label, density, histogram, logit-lens
tokens, top contexts with activating tokens shaded by activation / max activation.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from tqdm.auto import tqdm

from lm.io import atomic_path, read_json
from saes.access import check_features
from features.analysis import FeatureStats
from features.labels import token_text

TEMPLATES = Path(__file__).parent / "templates"


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["j2", "html"]),
                       trim_blocks=True, lstrip_blocks=True)


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)  # temp files are created 0600; pages should be readable when served


def show(tokenizer, i: int) -> str:
    """A token as displayed: newlines as ↵ so every context stays on one line."""
    return token_text(tokenizer, i).replace("\n", "↵").replace("\t", "⇥")


def context(tokenizer, ex: dict, tag: str = "", scale: float | None = None) -> dict:
    """Template-ready context: (token text, activation) pairs, peak index, value."""
    return {"pairs": [(show(tokenizer, t), a) for t, a in zip(ex["tokens"], ex["acts"])],
            "center": ex["center"], "value": ex["value"], "tag": tag, "scale": scale or max(ex["acts"] + [1e-9])}


def histogram_svg(counts: list[int], edges: list[float], width: int = 360, height: int = 150) -> str:
    """Bars for the log-spaced bins between the first and last non-empty one (under/overflow included)."""
    nz = [i for i, c in enumerate(counts) if c > 0]
    if not nz:
        return '<svg class="hist" width="%d" height="40"><text x="4" y="20">no activations</text></svg>' % width
    lo, hi = nz[0], nz[-1]
    shown = counts[lo:hi + 1]
    top = max(shown)
    pad, plot_h = 4, height - 22
    bw = (width - 2 * pad) / len(shown)
    bars = []
    for j, c in enumerate(shown):
        h = plot_h * c / top
        bars.append(f'<rect class="bar" x="{pad + j * bw:.1f}" y="{plot_h - h + 2:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                    f'height="{h:.1f}"><title>{c}</title></rect>')
    # counts[i] covers [edges[i-1], edges[i]); counts[0] and counts[-1] are under- and overflow
    left = edges[max(lo - 1, 0)]
    right = edges[min(hi, len(edges) - 1)]
    return (f'<svg class="hist" width="{width}" height="{height}" role="img" aria-label="activation histogram">'
            + "".join(bars)
            + f'<text x="{pad}" y="{height - 4}">{left:.3g}</text>'
            + f'<text x="{width - pad}" y="{height - 4}" text-anchor="end">{right:.3g}</text>'
            + f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle">activation (log scale)</text>'
            + f'<text x="{width - pad}" y="12" text-anchor="end">max count {top}</text></svg>')


def feature_view(stats: FeatureStats, tokenizer, i: int, neighbours: tuple | None = None) -> dict:
    t = stats.t
    edges = stats.cfg.hist_edges().tolist()
    return {
        "index": i, "label": stats.labels[i], "density": float(stats.density[i]), "n_active": int(t["n_active"][i]),
        "max_act": float(t["max_act"][i]), "mean_act": float(stats.mean_act[i]),
        "histogram_svg": histogram_svg(t["hist"][i].tolist(), edges),
        "promoted": [(show(tokenizer, a), v) for a, v in zip(t["logit_pos_ids"][i].tolist(),
                                                             t["logit_pos_vals"][i].tolist())],
        "suppressed": [(show(tokenizer, a), v) for a, v in zip(t["logit_neg_ids"][i].tolist(),
                                                               t["logit_neg_vals"][i].tolist())],
        "top": [context(tokenizer, e) for e in stats.examples(i, "top")],
        "random": [context(tokenizer, e) for e in stats.examples(i, "random")],
        "prev": neighbours[0] if neighbours else None, "next": neighbours[1] if neighbours else None,
    }


def feature_page(out_dir: str | Path, i: int) -> Path:
    return Path(out_dir) / "features" / f"{i}.html"


def concept_view(result, tokenizer, link) -> dict:
    """Template data for a `ConceptResult`; `link(latent)` gives a dashboard URL or None."""
    d = result.to_dict()
    for c, cand in zip(d["candidates"], result.candidates):
        c["dashboard"] = link(cand.latent)
        c["examples"] = [context(tokenizer, e, e["tag"]) for e in cand.examples]
    return d


def write_concept_page(result, tokenizer, out_dir: str | Path) -> Path:
    """`concepts/{name}.html` (linking feature pages that exist) and its JSON, which the index lists."""
    out = Path(out_dir)
    view = concept_view(result, tokenizer, lambda i: f"../features/{i}.html" if feature_page(out, i).is_file() else None)
    path = out / "concepts" / f"{result.name}.html"
    _write(path, _env().get_template("concept.html.j2").render(c=view))
    result.save(out / "concepts")
    return path


def write_dashboards(stats: FeatureStats, tokenizer, out_dir: str | Path, features=None,
                     concepts: list | None = None, progress: bool = True) -> Path:
    """Write `features/{i}.html` for the chosen latents (all when None), concept pages and `index.html`.

    The index lists every feature page and concept page present in `out_dir`, so dashboards can be
    added in several runs (e.g. all latents once, then a concept search's candidates).
    """
    out = Path(out_dir)
    feats = sorted(set(check_features(stats.d_sae, range(stats.d_sae) if features is None else features)))
    env = _env()
    common = {"hook": stats.meta["hook"], "sae_path": stats.meta.get("sae_path"), "n_tokens": stats.n_tokens,
              "d_sae": stats.d_sae}
    page = env.get_template("feature.html.j2")
    for j, i in enumerate(tqdm(feats, desc="dashboards", disable=not progress or len(feats) < 50, unit="page")):
        nb = (feats[j - 1] if j else None, feats[j + 1] if j + 1 < len(feats) else None)
        _write(feature_page(out, i), page.render(f=feature_view(stats, tokenizer, i, nb), **common))
    for c in concepts or []:
        write_concept_page(c, tokenizer, out)
    return write_index(stats, out)


def write_index(stats: FeatureStats, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    pages = (out / "features").glob("*.html")
    have = sorted(int(p.stem) for p in pages if p.stem.isdigit() and int(p.stem) < stats.d_sae)
    dens, mx, labels = stats.density.tolist(), stats.t["max_act"].tolist(), stats.labels
    rows = sorted(({"index": i, "label": labels[i], "density": dens[i], "max_act": mx[i]} for i in have),
                  key=lambda r: -r["density"])
    concepts = []
    for p in sorted((out / "concepts").glob("*.json")):
        c = read_json(p)
        best = c["candidates"][0]
        concepts.append({"name": c["name"], "best": best["latent"], "auroc": best["auroc_heldout"]})
    index = out / "index.html"
    _write(index, _env().get_template("index.html.j2").render(
        rows=rows, concepts=concepts, hook=stats.meta["hook"], sae_path=stats.meta.get("sae_path"),
        n_tokens=stats.n_tokens, d_sae=stats.d_sae))
    return index
