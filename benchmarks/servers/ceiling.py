"""
The ceiling: a bare twisted.web Resource that answers every GET with the
same constant bytes. Nothing a key-value server on twisted.web does can be
faster, so kvcache's GET is measured as a fraction of this.

    python -m benchmarks.servers.ceiling --port P [--no-access-log] [--processes N]

With the access log on (the default) it logs the way C{twistd -n} does.
C{--processes 2} serves the port from two processes (a C{SO_REUSEPORT}
socket each, all bound by the first, as kvcache's owner binds its
workers'): the ceiling of kvcache with C{--workers 2}.
"""

from __future__ import annotations

from typing import List, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from benchmarks.servers.common import VALUE, log_like_twistd, parse_args, quiet_site_class, serve


class Constant(Resource):
    """Every path, every GET: 200 and L{VALUE}."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return VALUE


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args("bare twisted.web ceiling", argv)
    log_like_twistd()
    site_class = quiet_site_class() if args.no_access_log else Site
    serve(site_class(Constant()), args.port, args.processes, args.listen_fd)


if __name__ == "__main__":
    main()
