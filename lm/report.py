"""One report per run: an HTML page with figures, plus JSON holding every number in it.

Stages of the main job append sections; each figure is a PNG saved beside its section's JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Template

from lm.io import atomic_path, write_json

PAGE = Template("""<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;max-width:100%}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left;font-size:14px;overflow-wrap:anywhere}pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}img{max-width:100%}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}.muted{color:#777}</style></head><body>
<h1>{{ title }}</h1><p class="muted">{{ created }} &middot; numbers in <a href="report.json">report.json</a></p>
{% for s in sections %}<h2 id="{{ s.key }}">{{ s.title }}</h2>
{% if s.seconds is not none %}<p class="muted">stage time {{ "%.1f"|format(s.seconds) }} s</p>{% endif %}
{% for p in s.text %}<p>{{ p }}</p>{% endfor %}
{% for t in s.tables %}<table>{% if t.header %}<tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>{% endif %}
{% for row in t.rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>{% endfor %}
{% for f in s.figures %}<p><img src="{{ f }}" alt="{{ f }}"></p>{% endfor %}
{% endfor %}</body></html>""", autoescape=True)


@dataclass
class Section:
    key: str
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    seconds: float | None = None


class Report:
    def __init__(self, out_dir: str | Path, title: str = "steerlens reproduction"):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.created = time.strftime("%Y-%m-%d %H:%M:%S")
        self.sections: list[Section] = []

    def section(self, key: str, title: str) -> Section:
        s = Section(key, title)
        self.sections.append(s)
        return s

    def figure(self, section: Section, fig, name: str) -> Path:
        """Save a matplotlib figure as PNG beside the report and attach it to a section."""
        path = self.dir / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        section.figures.append(name)
        return path

    def save(self) -> Path:
        numbers = {s.key: {"title": s.title, "seconds": s.seconds, **s.numbers} for s in self.sections}
        write_json(self.dir / "report.json", {"title": self.title, "created": self.created, "sections": numbers})
        with atomic_path(self.dir / "report.html") as tmp:
            tmp.write_text(PAGE.render(title=self.title, created=self.created, sections=self.sections),
                           encoding="utf-8")
        return self.dir / "report.html"


def table(header: list[str], rows: list[list]) -> dict:
    return {"header": header, "rows": [[str(c) for c in r] for r in rows]}
