"""The pages' template environment: Jinja2 with HTML autoescaping over job/report/templates/ (installed with the
package: setup.py's package_data)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from job.records import duration

TEMPLATES = Path(__file__).parent / "templates"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(
        enabled_extensions=("html", "j2"), default_for_string=True), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True)
    env.filters["percent"] = lambda value, digits=2: "–" if value is None else f"{100 * value:.{digits}f}%"
    env.filters["fixed"] = lambda value, digits=4: "–" if value is None else f"{value:.{digits}f}"
    env.filters["count"] = lambda value: "–" if value is None else f"{value:,}"
    env.filters["duration"] = duration
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
