"""
A kvcache with the admin page, over a L{MemoryStore}, for the browser tests
in C{tests/e2e/test_ui.py}. Not a test module: run it as a subprocess,

    python -m tests.helpers.ui_server [--token SECRET] [--max-batch-ops N]

It listens on a free port of 127.0.0.1, prints C{PORT <n>} on stdout once it
is listening, and serves until SIGTERM/SIGINT. A subprocess, because
selenium's calls block: a reactor in the test's own thread could not answer
the browser while the test waits on it.

With C{--token}, one token (named C{admin}) may read and write every key.
The page's own files are served without authentication (they hold no data;
the API calls they make carry the token): L{OpenUI} does that here, in the
shape asked of the tree's authentication layer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from kvtwist.auth import Authorizer, Token
from kvtwist.limits import Limits
from kvtwist.testing import MemoryStore
from kvtwist.web.browsers import BrowserPolicy
from kvtwist.web.root import make_root
from kvtwist.web.ui import make_ui_resource


class OpenUI(Resource):
    """
    Serves C{/ui} from C{ui} without authentication and everything else from
    C{tree} (which authenticates).
    """

    def __init__(self, tree: Resource, ui: Resource) -> None:
        super().__init__()
        self._tree = tree
        self._ui = ui

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if path == b"ui":
            return self._ui
        return self._tree.getChildWithDefault(path, request)

    def render(self, request: Request):
        return self._tree.render(request)


def build(token: Optional[str], limits: Optional[Limits] = None) -> Resource:
    """The served tree: kvcache over a fresh in-memory store, plus C{/ui}."""
    authorizer = None
    if token:
        authorizer = Authorizer([Token("admin", token, read=("",), write=("",), ops=True)])
    ui = make_ui_resource()
    # The real reactor as the store's clock: TTLs and watch heartbeats run
    # on wall time, as in a real server.
    tree = make_root(
        MemoryStore(clock=reactor),
        limits=limits,
        authorizer=authorizer,
        extra_children={b"ui": ui},
        browsers=BrowserPolicy(),
    )
    return OpenUI(tree, ui)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--token", help="require this bearer token")
    parser.add_argument("--max-batch-ops", type=int, help="ops in one POST /v1/batch (to see an import split)")
    args = parser.parse_args(argv)
    limits = Limits(max_batch_ops=args.max_batch_ops) if args.max_batch_ops else None
    site = Site(build(args.token, limits))
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print("PORT %d" % (port.getHost().port,), flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
