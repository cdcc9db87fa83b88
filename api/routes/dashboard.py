"""``/dashboard``: the operator's page (jobs, loss curves, privacy settings, events, checkpoints).

The page and its assets are public and static; the data comes from the JSON API with the key the user
pastes (the browser sends it as ``Authorization: Bearer``, it never appears in a URL). The files are
served from a fixed list (no path from the request reaches the file system), with a strict Content
Security Policy: scripts, styles and requests only from this gateway, no inline script, no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "dashboard"

#: URL name -> media type; the only files served.
ASSETS = {
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "chart.js": "text/javascript",
    "dom.js": "text/javascript",
    "views.js": "text/javascript",
    "privacy.js": "text/javascript",
    "style.css": "text/css",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/dashboard")
def dashboard_page() -> FileResponse:
    """The dashboard's HTML (no authentication: it holds no data)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


def _asset_route(name: str, media_type: str) -> None:
    def asset() -> FileResponse:
        return FileResponse(STATIC_DIR / name, media_type=f"{media_type}; charset=utf-8", headers=HEADERS)

    asset.__name__ = f"dashboard_{name.replace('.', '_')}"
    router.add_api_route(f"/dashboard/{name}", asset, methods=["GET"])


for _name, _media_type in ASSETS.items():
    _asset_route(_name, _media_type)
