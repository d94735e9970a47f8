# -*- test-case-name: tests.unit.test_config -*-
"""
The pieces kvcache's configuration (L{kvtwist.config}) is read with: where
a value came from (L{DEFAULT}, L{FILE}, L{ENV}, L{CLI}), L{ConfigError},
reading a TOML file, and the readers that turn one raw value (from a file,
the environment or the command line) into a setting's value or raise
C{ValueError} saying what it must be.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from kvtwist.limits import MiB

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Where a value came from, lowest precedence first.
DEFAULT, FILE, ENV, CLI = range(4)


class ConfigError(Exception):
    """
    A setting is unknown, malformed or contradicts another.

    @ivar layer: where the offending value came from (L{FILE}, L{ENV},
        L{CLI}, or L{DEFAULT} for a problem of the combination).
    """

    def __init__(self, message: str, layer: int = DEFAULT) -> None:
        super().__init__(message)
        self.layer = layer


def read_toml(path: str, what: str) -> Dict[str, Any]:
    """
    The TOML document at C{path}.

    @raise ConfigError: if it cannot be read or is not TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("cannot read the %s %s: %s" % (what, path, e.strerror or e), FILE)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s: not valid TOML: %s" % (path, e), FILE)


# -- value readers -------------------------------------------------------
#
# Each takes the value as TOML gives it (int, float, bool, str, list) or as
# a string (the command line and the environment), and returns the value
# or raises ValueError with a phrase saying what was expected.


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError("must be an integer")


def count(value: Any) -> int:
    """A positive integer."""
    number = _integer(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def workers(value: Any) -> int:
    """
    A number of processes: a positive integer, or C{auto} for one per core
    (C{os.cpu_count()}).
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return count(value)
    except ValueError:
        raise ValueError("must be a positive integer or auto") from None


def port(value: Any) -> int:
    """A TCP port number."""
    number = _integer(value)
    if not 0 < number < 65536:
        raise ValueError("must be a port number between 1 and 65535")
    return number


_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": MiB, "mib": MiB, "g": 1024 * MiB, "gib": 1024 * MiB}


def size(value: Any) -> int:
    """A positive number of bytes: an integer, or a string like C{"64KiB"}."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError("must be a number of bytes, optionally with KiB, MiB or GiB")
        number = int(match.group(1)) * _UNITS[match.group(2).lower()]
    else:
        number = _integer(value)
    if number <= 0:
        raise ValueError("must be a positive number of bytes")
    return number


def seconds(value: Any) -> float:
    """A positive, finite number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds, not a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
    else:
        raise ValueError("must be a number of seconds")
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a positive, finite number of seconds")
    return number


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def flag(value: Any) -> bool:
    """A boolean (C{true}/C{false}; in the environment also 1/0, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
    raise ValueError("must be true or false")


def endpoints(value: Any) -> Tuple[str, ...]:
    """
    Twisted server endpoint strings: a list (TOML, repeated options) or,
    in the environment, one string of them separated by whitespace.
    """
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a non-empty list of endpoint strings")
    for item in value:
        if not isinstance(item, str) or not item.strip() or ":" not in item:
            raise ValueError(
                "must be endpoint strings like tcp:8080:interface=127.0.0.1 (got %r)"
                % (item,)
            )
    return tuple(value)


def _text_list(value: Any, what: str) -> List[str]:
    """
    A list of strings (TOML, repeated options) or, in the environment, one
    string of them separated by whitespace.
    """
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of %s" % (what,))
    return list(value)


#: A host (a name, an IPv4 address or a bracketed IPv6 one) and a port.
_HOST_PORT = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(:[0-9]{1,5})?"
_ORIGIN = re.compile(r"https?://" + _HOST_PORT)


def origins(value: Any) -> Tuple[str, ...]:
    """
    Web origins a browser page may call from: C{scheme://host[:port]}
    (http or https, no path), or C{*} for any; lower-cased.
    """
    items = _text_list(value, "origins")
    for item in items:
        if item != "*" and not _ORIGIN.fullmatch(item):
            raise ValueError(
                "must be origins like https://app.example or http://localhost:3000 "
                "(scheme, host, optional port; no path), or * (got %r)" % (item,)
            )
    return tuple(item.lower() for item in items)


_HOST_NAME = re.compile(_HOST_PORT)


def host_names(value: Any) -> Tuple[str, ...]:
    """Host names (or C{host:port}) the server answers to; lower-cased."""
    items = _text_list(value, "host names")
    for item in items:
        if not _HOST_NAME.fullmatch(item):
            raise ValueError("must be host names like kv.example or kv.example:8080 (got %r)" % (item,))
    return tuple(item.lower() for item in items)


#: The store-spec schemes of etcd, and the URL scheme each one means.
ETCD_SCHEMES = {"etcd://": "http://", "etcds://": "https://"}


def _etcd_scheme(spec: str) -> Optional[str]:
    for scheme in ETCD_SCHEMES:
        if spec.startswith(scheme):
            return scheme
    return None


def store_spec(value: Any) -> str:
    """
    C{shelve} (the embedded store in --data), C{etcd://HOST:PORT[,...]}
    (several kvcache nodes on one etcd cluster) or C{etcds://HOST:PORT[,...]}
    (the same over TLS).
    """
    spec = text(value)
    if spec == "shelve":
        return spec
    scheme = _etcd_scheme(spec)
    if scheme is not None and all(
        part.strip() and ":" in part for part in spec[len(scheme):].split(",")
    ):
        return spec
    raise ValueError(
        "expected shelve, etcd://HOST:PORT[,HOST:PORT...] or etcds://HOST:PORT[,...] (TLS)"
    )


def is_etcd_store(spec: str) -> bool:
    """Whether a store spec names an etcd cluster (C{etcd://} or C{etcds://})."""
    return _etcd_scheme(spec) is not None


def etcd_endpoints(spec: str) -> List[str]:
    """
    The etcd client URLs named by an C{etcd://...} store spec (C{http}) or
    an C{etcds://...} one (C{https}).
    """
    scheme = _etcd_scheme(spec)
    if scheme is None:
        raise ValueError("not an etcd store: %r" % (spec,))
    return [ETCD_SCHEMES[scheme] + part.strip() for part in spec[len(scheme):].split(",")]


def etcd_remote_plain_hosts(spec: str) -> List[str]:
    """
    The hosts of a plain C{etcd://} spec that are not loopback: what is sent
    to them (a password, a token) crosses the network unencrypted.
    """
    if _etcd_scheme(spec) != "etcd://":
        return []
    hosts = [part.strip().rsplit(":", 1)[0] for part in spec[len("etcd://"):].split(",")]
    return [host for host in hosts if not is_loopback(host)]


@dataclass(frozen=True)
class Secret:
    """A secret setting (the etcd password): no repr or message shows it."""

    value: str = field(repr=False)


def secret_text(value: Any) -> Secret:
    """A non-empty string, kept as a L{Secret}."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return Secret(value)


def choice(*choices: str) -> Callable[[Any], str]:
    """One of C{choices}."""

    def read(value: Any) -> str:
        if value not in choices:
            raise ValueError("must be one of %s" % (", ".join(choices),))
        return value

    read.__doc__ = "One of %s." % (", ".join(choices),)
    return read


def is_loopback(address: str) -> bool:
    """
    Whether C{address} (an IP address, bracketed or with a zone, or
    C{localhost}) is this machine's loopback, IPv4-mapped IPv6 included.
    """
    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
