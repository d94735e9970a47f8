# -*- test-case-name: tests.unit.test_config -*-
"""
Who may use kvcache: bearer tokens read from C{[tokens.<name>]} tables
(in the config file or a token file), and protected mode, which refuses
to listen beyond loopback with no token unless told to (C{allow-open}).
Tokens never come from the command line: argv is visible to every local
user.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from kvtwist.auth import Token
from kvtwist.config_values import FILE, ConfigError, is_loopback, read_toml

#: The shortest secret a token may have: a guessable token is no token.
MIN_SECRET_LENGTH = 16

TOKEN_KEYS = ("secret", "read", "write", "ops")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# -- tokens ------------------------------------------------------------------


def _prefixes(raw: Any, where: str) -> Tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ConfigError('%s must be a list of key prefixes ("" means every key)' % (where,), FILE)
    return tuple(raw)


def parse_tokens(table: Mapping[str, Any], path: str) -> List[Token]:
    """
    The L{Token}s of a C{tokens} table read from C{path}.

    @raise ConfigError: naming the token and the file, for a missing or
        short secret, an unknown key or a bad rule. Secrets are never put
        in a message.
    """
    tokens = []
    for name, spec in table.items():
        where = "%s: token %r" % (path, name)
        if not _TOKEN_NAME.fullmatch(name):
            raise ConfigError(
                "%s: token name %r must be 1-64 letters, digits, '.', '_' or '-'" % (path, name),
                FILE,
            )
        if not isinstance(spec, dict):
            raise ConfigError("%s must be a table (secret, read, write, ops)" % (where,), FILE)
        for key in spec:
            if key not in TOKEN_KEYS:
                raise ConfigError(
                    "%s: unknown key %r (known: %s)" % (where, key, ", ".join(TOKEN_KEYS)), FILE
                )
        secret = spec.get("secret")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                "%s: 'secret' must be a string of at least %d characters"
                % (where, MIN_SECRET_LENGTH),
                FILE,
            )
        if secret != secret.strip() or any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
            # It travels in an HTTP header: printable ASCII, no spaces.
            raise ConfigError(
                "%s: 'secret' must be printable ASCII without spaces" % (where,), FILE
            )
        ops = spec.get("ops", False)
        if not isinstance(ops, bool):
            raise ConfigError("%s: 'ops' must be true or false" % (where,), FILE)
        tokens.append(
            Token(
                name,
                secret,
                read=_prefixes(spec.get("read", []), where + ": 'read'"),
                write=_prefixes(spec.get("write", []), where + ": 'write'"),
                ops=ops,
            )
        )
    return tokens


def token_file_tokens(path: str) -> List[Token]:
    """
    The tokens of a token file: a TOML document holding only
    C{[tokens.<name>]} tables.
    """
    document = read_toml(path, "token file")
    for key in document:
        if key != "tokens":
            raise ConfigError("%s: unknown key %r (a token file holds only [tokens.NAME] tables)" % (path, key), FILE)
    table = document.get("tokens", {})
    if not isinstance(table, dict):
        raise ConfigError("%s: 'tokens' must be a table of [tokens.NAME] tables" % (path,), FILE)
    return parse_tokens(table, path)


def readable_by_others(path: str) -> bool:
    """Whether the file at C{path} can be read by its group or by anyone."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def check_unique_tokens(tokens: Sequence[Token]) -> None:
    names: Dict[str, Token] = {}
    secrets: Dict[str, str] = {}
    for token in tokens:
        if token.name in names:
            raise ConfigError("token %r is defined twice" % (token.name,))
        names[token.name] = token
        other = secrets.get(token.secret)
        if other is not None:
            # Which of the two a request is could not be told apart.
            raise ConfigError("tokens %r and %r have the same secret" % (other, token.name))
        secrets[token.secret] = token.name


# -- protected mode --------------------------------------------------------------


def _split_endpoint(description: str) -> Tuple[List[str], Dict[str, str]]:
    """
    An endpoint string's positional and keyword arguments, with Twisted's
    quoting (a backslash escapes the next character).
    """
    parts: List[str] = []
    current: List[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    args: List[str] = []
    kwargs: Dict[str, str] = {}
    for part in parts:
        name, equals, value = part.partition("=")
        if equals and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            kwargs[name] = value
        else:
            args.append(part)
    return args, kwargs


def is_local_endpoint(description: str) -> bool:
    """
    Whether an endpoint can only be reached from this machine: a unix
    socket, or TCP/TLS bound to a loopback address (127.0.0.0/8, ::1).
    An empty interface (all interfaces) or an endpoint type not known here
    counts as reaching beyond.
    """
    args, kwargs = _split_endpoint(description)
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return True
    if kind in ("tcp", "tcp6", "ssl"):
        default = "::" if kind == "tcp6" else ""
        return is_loopback(kwargs.get("interface", default))
    return False


def check_protected(endpoints: Sequence[str], tokens: Sequence[Token], allow_open: bool) -> None:
    """
    Protected mode: refuse to listen beyond loopback with no token.

    @raise ConfigError: naming the first such endpoint.
    """
    if tokens or allow_open:
        return
    for endpoint in endpoints:
        if not is_local_endpoint(endpoint):
            raise ConfigError(
                "protected mode: refusing to listen on %s, which is reachable "
                "beyond this machine, with no token configured (anyone who "
                "reaches it could read and write every key). Configure tokens "
                "([tokens.NAME] tables in --config or --token-file), listen on "
                "127.0.0.1 or a unix socket, or give --allow-open to serve "
                "without authentication." % (endpoint,)
            )
