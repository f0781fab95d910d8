"""The dashboard's HTML: small templates in `cloud/web/templates`, filled in with escaped
values (pure).  Pages carry no data: their scripts fetch it from `/api/...`, so a page is the
same for every user but the name in the header and the CSRF token in a `<meta>` tag.

No inline script or style anywhere (the Content-Security-Policy forbids both), no external
resource: everything is served from `/static/`.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from string import Template

__all__ = ["STATIC_DIR", "TEMPLATE_DIR", "login_page", "page"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"

#: page name -> (title, script)
PAGES = {"fleet": ("Fleet", "fleet.js"), "device": ("Device", "device.js"),
         "alerts": ("Alerts", "alerts.js")}


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATE_DIR / name).read_text())


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def page(name: str, *, user: str, csrf: str, attrs: dict[str, str] | None = None) -> str:
    """A page of the signed-in dashboard; `attrs` become `data-*` attributes of `<main>`."""
    title, script = PAGES[name]
    data = "".join(f' data-{_e(k)}="{_e(v)}"' for k, v in (attrs or {}).items())
    body = _template(f"{name}.html").substitute()
    return _template("layout.html").substitute(
        title=_e(title), user=_e(user), csrf=_e(csrf), page=_e(name), data=data, body=body,
        script=_e(script))


def login_page(*, csrf: str, next_path: str, error: str = "", notice: str = "") -> str:
    parts = []
    if error:
        parts.append(f'<p class="error" role="alert">{_e(error)}</p>')
    if notice:
        parts.append(f'<p class="notice">{_e(notice)}</p>')
    return _template("login.html").substitute(csrf=_e(csrf), next=_e(next_path),
                                              messages="".join(parts))
