"""The internal port's API docs: the OpenAPI document of both ports and the stream route, and ``/docs``.

The stream route is served by the HTTP edge, not by FastAPI, so ``install_openapi`` adds it to
FastAPI's document from its one definition (``gateway.edge.route``). ``mount_docs`` replaces
FastAPI's CDN-based ``/docs`` (and ``/redoc``, which has no offline assets) with Swagger UI served
from the ``swagger-ui-bundle-v2`` package: the page works offline and under a strict
Content-Security-Policy (no inline script). The routes are listed in docs/http-api.md.

The document is read on the internal port, but the stream route (and the dev routes) are served on the
public one: their path items name the public port in ``servers`` (as the reader's browser reaches this
host), so "Try it out" calls the right port. The Kafka side's contract, the AsyncAPI document in
``schemas/``, is served next to it (``/asyncapi.yaml``) and linked from the description.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.edge.route import PATH_TEMPLATE, STATUS_PATH_TEMPLATE, openapi_operation
from gateway.reads.openapi import status_operation
from gateway.settings import EdgeSettings

ASYNCAPI_PATH = "/asyncapi.yaml"
ASYNCAPI_LINK = (
    "\n\nThe Kafka side (the records producers write to the topic) is described by the "
    f"[AsyncAPI document]({ASYNCAPI_PATH.lstrip('/')})."
)
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")

_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def swagger_ui_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def mount_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serves Swagger UI for ``app.openapi_url`` at ``path`` with assets from the installed package."""
    drop = {url for url in (app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url) if url}
    app.router.routes[:] = [route for route in app.router.routes if not _route_path_in(route, drop)]
    app.docs_url = app.redoc_url = app.swagger_ui_oauth2_redirect_url = None
    assets_dir = swagger_ui_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    headers = {"content-security-policy": CSP, "cache-control": "no-cache"}
    page = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{app.title} - API docs</title>
  <link rel="icon" type="image/png" href="{path}/assets/favicon-32x32.png">
  <link rel="stylesheet" href="{path}/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{path}/assets/swagger-ui-bundle.js"></script>
  <script src="{path}/assets/init.js"></script>
</body>
</html>
"""
    init = (
        "window.ui = SwaggerUIBundle({"
        f"url: {json.dumps(openapi_url)}, dom_id: '#swagger-ui', deepLinking: true, "
        "presets: [SwaggerUIBundle.presets.apis], layout: 'BaseLayout'});\n"
    )

    @app.get(path, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @app.get(f"{path}/assets/init.js", include_in_schema=False)
    async def docs_init() -> Response:
        return Response(init, media_type="text/javascript; charset=utf-8", headers={"cache-control": "no-cache"})

    @app.get(f"{path}/assets/{{name}}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(assets_dir / name, media_type=media_type, headers={"cache-control": "max-age=86400"})


def _route_path_in(route: BaseRoute, paths: set[str]) -> bool:
    return isinstance(route, Route) and route.path in paths


def install_openapi(internal: FastAPI, public: FastAPI, settings: EdgeSettings) -> None:
    """``internal``'s ``/openapi.json`` documents both ports' routes and the stream route, each with the
    port that serves it; ``/asyncapi.yaml`` serves the Kafka contract."""
    internal.openapi = _openapi(internal, public)  # type: ignore[method-assign]
    url = internal.openapi_url or "/openapi.json"
    internal.router.routes[:] = [route for route in internal.router.routes if not _route_path_in(route, {url})]
    split = bool(settings.internal_port) and settings.internal_port != settings.port
    asyncapi = resources.files("schemas").joinpath("asyncapi.yaml").read_bytes()

    public_paths: set[str] = set()

    @internal.get(url, include_in_schema=False)
    async def openapi_document(request: Request) -> JSONResponse:
        document = internal.openapi()
        if split:
            if not public_paths:
                public_paths.update(_public_paths(internal, public))
            document = with_servers(document, public_paths, _public_server(request, settings))
        return JSONResponse(document)

    @internal.get(ASYNCAPI_PATH, include_in_schema=False)
    async def asyncapi_document() -> Response:
        return Response(asyncapi, media_type="application/yaml; charset=utf-8", headers={"cache-control": "no-cache"})


def with_servers(document: dict[str, Any], public_paths: set[str], public: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` whose public-port path items name ``public`` as their server; the others are
    served where the document is (its default server, ``/``)."""
    paths = {
        path: {**item, "servers": [public]} if path in public_paths else item
        for path, item in document.get("paths", {}).items()
    }
    return {**document, "paths": paths}


def _public_paths(internal: FastAPI, public: FastAPI) -> set[str]:
    """The documented paths only the public port serves (the app's routes may be routers: ask FastAPI)."""

    def paths(app: FastAPI) -> set[str]:
        return set(get_openapi(title=app.title, version=app.version, routes=app.routes).get("paths", {}))

    return {PATH_TEMPLATE, STATUS_PATH_TEMPLATE} | (paths(public) - paths(internal))


def _public_server(request: Request, settings: EdgeSettings) -> dict[str, Any]:
    """The public port as the reader reaches this host; the host and scheme are variables (an ingress's)."""
    host = request.url.hostname or "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if not _HOST_NAME.fullmatch(host):
        host = "127.0.0.1"
    return {
        "url": "{scheme}://{host}:{port}" + settings.root_path.rstrip("/"),
        "description": "The public port (GATEWAY_PORT): the stream route. Behind an ingress, its scheme and host.",
        "variables": {
            "scheme": {"default": "http", "enum": ["http", "https"]},
            "host": {"default": host},
            "port": {"default": str(settings.port)},
        },
    }


def _openapi(internal: FastAPI, public: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document of both ports plus the stream route, built on first use and kept."""

    def build() -> dict[str, Any]:
        if internal.openapi_schema is None:
            document = get_openapi(
                title=internal.title,
                version=internal.version,
                description=(internal.description or "") + ASYNCAPI_LINK,
                routes=[*internal.routes, *public.routes],
            )
            paths = document.setdefault("paths", {})
            paths[PATH_TEMPLATE] = {"get": openapi_operation()}
            paths[STATUS_PATH_TEMPLATE] = {"get": status_operation()}
            internal.openapi_schema = document
        return internal.openapi_schema

    return build
