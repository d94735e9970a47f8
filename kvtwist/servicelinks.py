# -*- test-case-name: tests.unit.test_config -*-
"""
Recognise the environment variables Kubernetes injects for a Service.

For every Service in a pod's namespace, Kubernetes adds "service links"
to each container's environment (unless the pod sets
C{enableServiceLinks: false}). For a Service named C{kvcache} (or
C{kvcache-headless}, C{kvcache-0} ...) they start with C{KVCACHE_}, like
kvcache's own settings::

    KVCACHE_SERVICE_HOST=10.96.0.12
    KVCACHE_SERVICE_PORT=8080
    KVCACHE_SERVICE_PORT_HTTP=8080            (one per named port)
    KVCACHE_PORT=tcp://10.96.0.12:8080
    KVCACHE_PORT_8080_TCP=tcp://10.96.0.12:8080
    KVCACHE_PORT_8080_TCP_PROTO=tcp
    KVCACHE_PORT_8080_TCP_PORT=8080
    KVCACHE_PORT_8080_TCP_ADDR=10.96.0.12

These describe another address of the Service, never a setting of this
server, so L{kvtwist.config} skips them instead of reading C{KVCACHE_PORT}
as C{--port} or refusing the rest as unknown. They are recognised by
shape: a C{*_PORT} variable only when its value is a C{PROTO://HOST:PORT}
link, so C{KVCACHE_PORT=9000} is still the port setting.
"""

from __future__ import annotations

import re

#: The protocols a Service port may have.
_PROTOCOLS = "TCP|UDP|SCTP"

#: Names that are only ever service links: C{*_SERVICE_HOST},
#: C{*_SERVICE_PORT}, C{*_SERVICE_PORT_<port name>}, and
#: C{*_PORT_<number>_<protocol>[_PROTO|_PORT|_ADDR]}.
_LINK_NAME = re.compile(
    r"[A-Z0-9_]*?(_SERVICE_HOST|_SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|_PORT_\d+_(%s)(_PROTO|_PORT|_ADDR)?)" % (_PROTOCOLS,)
)

#: C{*_PORT} holding the Service's first port as a link URL.
_PORT_NAME = re.compile(r"[A-Z0-9_]*_PORT")
_LINK_URL = re.compile(r"(%s)://[^\s/]+:\d+" % (_PROTOCOLS.lower(),))


def is_service_link(name: str, value: str) -> bool:
    """
    Whether the environment variable C{name=value} has the shape of a
    Kubernetes service link.
    """
    if _LINK_NAME.fullmatch(name):
        return True
    return bool(_PORT_NAME.fullmatch(name) and _LINK_URL.fullmatch(value.strip()))
