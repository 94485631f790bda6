"""The browser's WSGI app: routes, request checks and responses.

Read-only (GET and HEAD only). What it serves is named by (sample key, slot): a key must be
in the manifest and a slot one of the registry's, so the only bytes that leave are members of
the shard set it was given, derived images of them, and pages. A path with a `.` or `..`
segment, a backslash or a NUL — before or after percent-decoding — is refused outright.
"""

from __future__ import annotations

import functools
import logging
import socketserver
import time
from urllib.parse import parse_qs, unquote
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from graph200k.browse import media, pages
from graph200k.browse.catalog import Catalog, Filters
from graph200k.nodes import SLOT_NODE, SLOTS
from graph200k.reader import FetchError
from graph200k.tasks import TaskError

log = logging.getLogger("graph200k.browse")
# No script runs on any page; images and styles come from this server only.
CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'"
TASK_SPLITS = ("train", "test", "unseen")
TASK_RES = (128, 256, 384)


class Refused(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def unsafe(path: str) -> bool:
    """A path that tries to leave the app's namespace (traversal, odd bytes)."""
    for text in (path, unquote(path)):
        if "\\" in text or "\x00" in text:
            return True
        if any(seg in (".", "..") for seg in text.split("/")):
            return True
    return False


class BrowseApp:
    def __init__(self, catalog: Catalog, cache_dir):
        self.catalog = catalog
        self.thumbs = media.Thumbnails(catalog, cache_dir)
        self.src = functools.partial(pages.thumb_src, self.thumbs)

    def __call__(self, environ, start_response):
        t0 = time.perf_counter()
        try:
            status, ctype, body, extra = self.handle(environ)
        except Refused as e:
            status, ctype, body, extra = e.status, "text/plain; charset=utf-8", str(e).encode(), []
        except FetchError as e:
            status, ctype, body, extra = ("404 Not Found", "text/plain; charset=utf-8",
                                          f"{e.reason}: {e}".encode(), [])
        except Exception as e:  # one bad request never stops the server
            log.exception("browse: %s failed", environ.get("PATH_INFO"))
            status, ctype, body, extra = ("500 Internal Server Error",
                                          "text/plain; charset=utf-8",
                                          f"{type(e).__name__}: {e}".encode(), [])
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))),
                   ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", CSP),
                   ("Referrer-Policy", "no-referrer"), *extra]
        start_response(status, headers)
        log.debug("%s %s %s %.1f ms", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                  status.split()[0], 1e3 * (time.perf_counter() - t0))
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    # ---- routing -----------------------------------------------------------------------
    def handle(self, environ):
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            raise Refused("405 Method Not Allowed", "read-only: GET and HEAD only")
        path = environ.get("PATH_INFO") or "/"
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        if unsafe(path) or unsafe(raw.split("?", 1)[0]):
            raise Refused("400 Bad Request", "refused: the path leaves the browser's pages")
        query = parse_qs(environ.get("QUERY_STRING") or "", keep_blank_values=False)
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self.html(pages.overview(self.catalog))
        head, rest = parts[0], parts[1:]
        if head == "samples" and not rest:
            try:
                filters = Filters.from_query(query)
            except ValueError as e:
                return self.html(pages.samples(self.catalog, Filters(), str(e)), "400 Bad Request")
            return self.html(pages.samples(self.catalog, filters, src=self.src))
        if head == "sample" and len(rest) == 1:
            key = self.key(rest[0])
            return self.html(pages.sample(self.catalog, key, bool(_one(query, "degradations")),
                                          _int(query, "seed", 0), self.src))
        if head in ("img", "thumb") and len(rest) == 2:
            return self.image(head, self.key(rest[0]), self.slot(rest[1]), query)
        if head == "task" and not rest:
            return self.task(query)
        if head == "taskgrid.png" and not rest:
            return self.task_grid(query)
        raise Refused("404 Not Found", f"no page {path!r}")

    def key(self, key: str) -> str:
        if self.catalog.index_of(key) is None:
            raise Refused("404 Not Found", f"sample {key!r} is not in the manifest")
        return key

    @staticmethod
    def slot(slot: str) -> str:
        if slot not in SLOTS:
            raise Refused("404 Not Found", f"unknown slot {slot!r}")
        return slot

    # ---- responses ---------------------------------------------------------------------
    @staticmethod
    def html(text: str, status: str = "200 OK"):
        return status, "text/html; charset=utf-8", text.encode(), [("Cache-Control", "no-store")]

    def image(self, kind: str, key: str, slot: str, query):
        variant, seed = _int(query, "v", 0), _int(query, "seed", 0)
        if variant < 0 or variant >= max(1, self._variants(key, slot)):
            raise Refused("404 Not Found", f"sample {key!r} has no variant {variant} of {slot!r}")
        cache = [("Cache-Control", "private, max-age=300")]
        if kind == "thumb":
            side = _int(query, "side", media.THUMB_SIDES[0])
            if side not in media.THUMB_SIDES:
                raise Refused("400 Bad Request", f"side must be one of {media.THUMB_SIDES}")
            return "200 OK", "image/jpeg", self.thumbs.get(key, slot, variant, seed, side), cache
        data, ctype = media.member_image(self.catalog, key, slot, variant, seed)
        return "200 OK", ctype, data, cache

    def _variants(self, key: str, slot: str) -> int:
        m = self.catalog.manifest
        return m.variant_count(m.index_of(key), SLOT_NODE[slot])

    def _task_args(self, query):
        pick = _one(query, "pick")
        family, _, variant = pick.partition("/") if pick else (
            _one(query, "family"), "", _one(query, "variant"))
        if not family:  # the first variant any split can fill
            fill = [r for r in self.catalog.variant_table() if r["train"]] or \
                self.catalog.variant_table()
            family, variant = fill[0]["family"], fill[0]["variant"]
        split = _one(query, "split") or "train"
        if split not in TASK_SPLITS:
            raise Refused("400 Bad Request", f"split must be one of {TASK_SPLITS}")
        res = _int(query, "res", 256)
        if res not in TASK_RES:
            raise Refused("400 Bad Request", f"res must be one of {TASK_RES}")
        return family, variant, _int(query, "seed", 0), split, res

    def task(self, query):
        family, variant, seed, split, res = self._task_args(query)
        try:
            task = self.catalog.draw_task(family, variant, seed, split)
        except (TaskError, ValueError) as e:
            return self.html(pages.task_page(self.catalog, family, variant, seed, split, res,
                                             error=str(e)))
        return self.html(pages.task_page(self.catalog, family, variant, seed, split, res, task))

    def task_grid(self, query):
        family, variant, seed, split, res = self._task_args(query)
        try:
            task = self.catalog.draw_task(family, variant, seed, split)
        except (TaskError, ValueError) as e:
            raise Refused("404 Not Found", str(e)) from None
        grid = media.task_grid(self.catalog, task, res)
        return "200 OK", "image/png", media.grid_png(grid), [("Cache-Control", "no-store")]


def _one(query, name: str) -> str:
    return (query.get(name) or [""])[-1].strip()


def _int(query, name: str, default: int) -> int:
    text = _one(query, name)
    try:
        return int(text) if text else default
    except ValueError:
        raise Refused("400 Bad Request", f"{name} must be a whole number, not {text!r}") from None


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ServerHandler(ServerHandler):
    http_version = "1.1"


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, kept alive (HTTP/1.1): a page's thumbnails share a connection
    instead of paying a TCP connect and a thread each (every response has a length)."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle kept-alive connection stays open
    # wsgiref writes status+headers and the body separately: with Nagle's algorithm on, a
    # kept-alive connection waited for the delayed ACK, ~40 ms a response (measured).
    disable_nagle_algorithm = True
    # ... and writes the status line, headers and body in several calls: buffered, a
    # response leaves in one send (wsgiref flushes after the body).
    wbufsize = 1 << 16

    def handle(self):
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self):
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except TimeoutError:
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error response was sent
            return
        handler = _ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(),
                                 multithread=True)
        handler.request_handler = self
        handler.run(self.server.get_app())

    def get_environ(self):
        env = super().get_environ()
        env["RAW_URI"] = self.path  # the request target as sent, before percent-decoding
        return env

    def log_message(self, format, *args):  # one line per request at debug level, not stderr
        log.debug("%s " + format, self.address_string(), *args)


def make(app: BrowseApp, host: str = "127.0.0.1", port: int = 8000):
    """A threading WSGI server bound to (host, port); port 0 picks a free one."""
    return make_server(host, port, app, server_class=_Server, handler_class=_Handler)
