# -*- test-case-name: tests.e2e.test_ui -*-
"""
The admin page: C{/ui/} serves a small, dependency-free web page (HTML, CSS
and vanilla JavaScript modules, no build step) that browses, edits and
watches keys through the v1 API.

The files ship as package data in C{kvtwist/web/static/} and are read once,
when L{make_ui_resource} builds the resource, so serving them never touches
the disk (or a thread) and a wheel installed as a zip works as well.

Every answer carries a strict Content-Security-Policy (the page loads only
its own files and talks only to its own origin), C{nosniff}, no framing and
no referrer. Files are revalidated on every load (C{Cache-Control:
no-cache} with a strong ETag, answered 304 when unchanged): their names
carry no content hash, so a long max-age would keep old code after an
upgrade.

The page itself holds no data: every call it makes to the API carries the
user's bearer token, so serving these files needs no authentication (the
tree's authentication layer must let C{/ui/...} through for the page to load
on a server with tokens).

Mount it with C{make_root(store, extra_children={b"ui": make_ui_resource()})}.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Dict, Mapping, Optional

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from kvtwist.web.resource import Answers405, Response, not_found_response, write_response

__all__ = ["CONTENT_SECURITY_POLICY", "load_assets", "make_ui_resource", "UIResource", "StaticFile"]

#: The page may load scripts, styles, images and fonts only from its own
#: origin, talk only to its own origin (the API), and nothing may frame it.
#: No 'unsafe-inline': the page has no inline script or style.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)

#: Headers on every answer of the UI tree, files and errors alike.
SECURITY_HEADERS: Mapping[bytes, bytes] = {
    b"content-security-policy": CONTENT_SECURITY_POLICY,
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cross-origin-opener-policy": b"same-origin",
}

#: Content types by file extension. JavaScript modules must have a
#: JavaScript type or browsers refuse to run them (strict MIME checking).
CONTENT_TYPES: Mapping[str, bytes] = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}

#: The file served at the tree's own path (C{/ui/}).
INDEX = "index.html"


@dataclass(frozen=True)
class Asset:
    """One static file, held in memory."""

    body: bytes
    content_type: bytes
    etag: bytes


def _content_type(name: str) -> Optional[bytes]:
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower()) if dot > 0 else None


def load_assets(package: str = "kvtwist.web", folder: str = "static") -> Dict[bytes, Asset]:
    """
    Read every servable file of C{package}/C{folder} (flat: no sub-folders;
    only the types in L{CONTENT_TYPES}; no hidden files).

    @return: the assets by URL path segment.
    """
    assets: Dict[bytes, Asset] = {}
    for item in resources.files(package).joinpath(folder).iterdir():
        name = item.name
        content_type = _content_type(name)
        if name.startswith(".") or content_type is None or not item.is_file():
            continue
        body = item.read_bytes()
        tag = b'"%s"' % (hashlib.sha256(body).hexdigest()[:32].encode("ascii"),)
        assets[name.encode("utf-8")] = Asset(body, content_type, tag)
    return assets


def _matches(if_none_match: Optional[bytes], tag: bytes) -> bool:
    """Whether an C{If-None-Match} header names C{tag} (weakly, as for GET)."""
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(b",")]
    return b"*" in tags or tag in tags or b"W/" + tag in tags


class UIPart(Answers405):
    """
    Base of the UI tree: security headers on every answer, and 405 with
    C{Allow} for methods other than GET and HEAD (these are plain web
    resources, not the seed's routes).
    """

    route = "/ui/"
    # Plain web files: they read no parameter, and browsers and tools add
    # their own (cache busters), so none is refused.
    parameters = None

    def decorate(self, response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def getChild(self, path: bytes, request: Request) -> Resource:
        return UI_NOT_FOUND


class UINotFound(UIPart):
    """A problem+json 404 inside the UI tree, with the security headers."""

    isLeaf = True
    route = "/ui/(unknown)"

    def render(self, request: Request) -> int:
        request.kvtwist_route = self.route  # type: ignore[attr-defined]
        write_response(request, self.decorate(not_found_response()))
        return NOT_DONE_YET


UI_NOT_FOUND = UINotFound()


class StaticFile(UIPart):
    """One file of the page: GET and HEAD, with ETag revalidation."""

    route = "/ui/{file}"

    def __init__(self, asset: Asset) -> None:
        super().__init__()
        self._asset = asset

    def render_GET(self, request: Request) -> int:
        asset = self._asset
        headers = {b"etag": asset.etag, b"cache-control": b"no-cache"}
        if _matches(request.getHeader(b"if-none-match"), asset.etag):
            response = Response(304, content_type=None, headers=headers)
        else:
            response = Response(200, asset.body, asset.content_type, headers)
        write_response(request, self.decorate(response))
        return NOT_DONE_YET


class UIResource(UIPart):
    """
    C{/ui/} is the page; C{/ui/<file>} are its assets; anything else below
    is a problem+json 404. C{/ui} without the slash never reaches here: a
    single segment at the root is the seed's key C{ui}
    (L{kvtwist.web.root.Root}).
    """

    route = "/ui"

    def __init__(self, assets: Mapping[bytes, Asset]) -> None:
        super().__init__()
        self._files = {name: StaticFile(asset) for name, asset in assets.items()}
        if INDEX.encode("ascii") not in self._files:
            raise ValueError("the admin page's %s is missing from its package data" % (INDEX,))

    def getChild(self, path: bytes, request: Request) -> Resource:
        # Assets are flat: a longer path (/ui/app.js/x) names nothing.
        if request.postpath:
            return UI_NOT_FOUND
        if path == b"":
            return self._files[INDEX.encode("ascii")]
        return self._files.get(path, UI_NOT_FOUND)


def make_ui_resource() -> UIResource:
    """The admin page's Resource, to mount at C{/ui}."""
    return UIResource(load_assets())
