"""
Load generation with wrk: the Lua scripts (written to a temp dir at run
time) and a runner that reads wrk's numbers from JSON printed by the
scripts' C{done()} hook, so nothing depends on wrk's human-readable output.

Latencies are in microseconds as wrk measures them (from writing the
request to reading the whole response, per connection).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional

from benchmarks.procs import HOST, HttpRequest

#: Printed by every script's done(); the runner keeps the JSON after it.
MARKER = "WRKJSON "

# Appended to every script: one JSON line with the totals, the latency
# percentiles and any per-thread counters a script keeps in `counters`.
_DONE = r"""
local function counters_json(threads)
  local totals = {}
  for _, t in ipairs(threads) do
    local c = t:get("counters")
    if c then
      for k, v in pairs(c) do totals[k] = (totals[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(totals) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function json_string(text)
  text = text:gsub("\\", "\\\\")
  text = text:gsub('"', '\\"')
  text = text:gsub("%c", " ")
  return '"' .. text .. '"'
end

-- The first non-2xx answer each thread saw, if a script keeps one.
local function bad_samples_json(threads)
  local parts = {}
  for _, t in ipairs(threads) do
    local sample = t:get("first_bad")
    if sample then parts[#parts + 1] = json_string(sample) end
  end
  return "[" .. table.concat(parts, ", ") .. "]"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write("WRKJSON ")
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, ' ..
    '"p50": %d, "p90": %d, "p99": %d, "p999": %d}, "counters": %s, "bad_samples": %s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), counters_json(threads), bad_samples_json(threads)))
end
"""

# setup() runs in wrk's main Lua state once per thread: it numbers the
# threads (scripts that run one connection per thread use the number as a
# client id) and keeps them so done() can add up their counters.
_SETUP = r"""
threads = {}
local next_id = 1
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  threads[#threads + 1] = thread
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua literal here


def _headers_table(headers: Dict[str, str]) -> str:
    items = ", ".join("[%s] = %s" % (_lua_string(k), _lua_string(v)) for k, v in headers.items())
    return "{" + items + "}"


def fixed_request_script(request: HttpRequest) -> str:
    """The same request over and over (GET of one key, etcd's range)."""
    lines = [_SETUP, "wrk.method = %s" % _lua_string(request.method)]
    lines.append("wrk.path = %s" % _lua_string(request.path))
    if request.body:
        lines.append("wrk.body = %s" % _lua_string(request.body.decode("utf-8")))
    for name, value in request.headers.items():
        lines.append("wrk.headers[%s] = %s" % (_lua_string(name), _lua_string(value)))
    return "\n".join(lines) + _DONE


# Scripts with a per-client sequence make request() idempotent until the
# answer arrives: wrk may call request() again for a request it has not sent
# yet (seen as set/commit sequences drifting by one), and must then get the
# same one back.
_SEQUENCE = r"""
local current, current_kind = nil, nil
function request()
  if current == nil then current, current_kind = next_request() end
  return current
end
function response(status, headers, body)
  local kind = current_kind
  current, current_kind = nil, nil
  answered(kind, status, body)
end
"""

# One connection per thread (-t N -c N), so the per-thread toggle below is a
# per-client one: each client stages its own key, then commits, in turn.
CYCLE_SCRIPT = _SETUP + _SEQUENCE + r"""
local n = 0
local json_headers = {["Content-Type"] = "application/json"}
function next_request()
  n = n + 1
  if n % 2 == 1 then
    return wrk.format("POST", "/set", json_headers,
                      string.format('{"bench-client-%d": %d}', id, n)), "set"
  end
  return wrk.format("POST", "/commit", json_headers, ""), "commit"
end
function answered(kind, status, body)
  if status >= 300 and not first_bad then
    first_bad = kind .. " " .. status .. ": " .. string.sub(body, 1, 300)
  end
end
""" + _DONE


def soak_script(keys: int, get_share: float, keys_per_commit: int) -> str:
    """
    Mixed load, one connection per thread: each operation is a GET of a
    random committed key (C{get_share} of them) or a C{keys_per_commit}-key
    C{POST /set} followed by that client's C{POST /commit}. The keys of one
    set are consecutive from a random start, so they are distinct (kvcache
    refuses a JSON object that repeats a key).
    """
    return _SETUP + _SEQUENCE + r"""
local KEYS = %d
local GET_SHARE = %f
local PER_COMMIT = %d
local json_headers = {["Content-Type"] = "application/json"}
local commit_next = false
counters = {get = 0, set = 0, commit = 0, get_bad = 0, set_bad = 0, commit_bad = 0}

function init(args)
  math.randomseed(id * 7919)
end

local function key(i)
  return string.format("k%%08d", i %% KEYS)
end

function next_request()
  if commit_next then
    commit_next = false
    return wrk.format("POST", "/commit", json_headers, ""), "commit"
  end
  if math.random() < GET_SHARE then
    return wrk.format("GET", "/" .. key(math.random(0, KEYS - 1))), "get"
  end
  local first = math.random(0, KEYS - 1)
  local parts = {}
  for i = 1, PER_COMMIT do
    parts[i] = string.format('"%%s": {"soak": %%d, "client": %%d}', key(first + i), i, id)
  end
  commit_next = true
  return wrk.format("POST", "/set", json_headers, "{" .. table.concat(parts, ", ") .. "}"), "set"
end

function answered(kind, status, body)
  counters[kind] = counters[kind] + 1
  if status >= 300 then
    counters[kind .. "_bad"] = counters[kind .. "_bad"] + 1
    local by_status = kind .. "_" .. status
    counters[by_status] = (counters[by_status] or 0) + 1
    if not first_bad then first_bad = kind .. " " .. status .. ": " .. string.sub(body, 1, 300) end
  end
end
""" % (keys, get_share, keys_per_commit) + _DONE


def _spread_setup(ports: List[int]) -> str:
    """
    A setup() that aims thread N at C{ports[(N - 1) % len(ports)]}: wrk
    connects every thread to the URL's address unless setup() gives the
    thread another one, and splits the connections evenly over threads. So
    one wrk of the same shape can load one server or several, and its
    latency percentiles cover all of them together.
    """
    return r"""
threads = {}
local next_id = 1
local PORTS = {%s}
function setup(thread)
  thread:set("id", next_id)
  thread.addr = wrk.lookup(%s, tostring(PORTS[(next_id - 1) %% #PORTS + 1]))[1]
  next_id = next_id + 1
  threads[#threads + 1] = thread
end
function init(args)
  math.randomseed(id * 7919)
end
""" % (", ".join(str(p) for p in ports), _lua_string(HOST))


def spread_kv_script(
    ports: List[int],
    get_share: float,
    read_path: str,
    read_keys: int,
    write_path: str,
    write_keys: int,
    value: bytes,
) -> str:
    """
    GETs and PUTs of random keys, threads spread over C{ports} (see
    L{_spread_setup}). C{read_path} and C{write_path} are Lua
    C{string.format} patterns taking one key number (below C{read_keys},
    C{write_keys}); C{get_share} of the requests are GETs (1.0: only GETs,
    0.0: only PUTs of C{value} as JSON). No response() hook: it would make
    wrk parse every answer in Lua, and wrk shares the cores with the servers.
    """
    return _spread_setup(ports) + r"""
local GET_SHARE = %r
local READ_PATH, READ_KEYS = %s, %d
local WRITE_PATH, WRITE_KEYS = %s, %d
local VALUE = %s
local put_headers = {["Content-Type"] = "application/json"}
function request()
  if GET_SHARE >= 1 or (GET_SHARE > 0 and math.random() < GET_SHARE) then
    return wrk.format("GET", string.format(READ_PATH, math.random(0, READ_KEYS - 1)))
  end
  return wrk.format("PUT", string.format(WRITE_PATH, math.random(0, WRITE_KEYS - 1)), put_headers, VALUE)
end
""" % (float(get_share), _lua_string(read_path), read_keys, _lua_string(write_path), write_keys,
       _lua_string(value.decode("utf-8"))) + _DONE


def spread_post_script(ports: List[int], path: str, bodies: List[str]) -> str:
    """
    C{POST path} with a body picked at random from C{bodies} (JSON, e.g.
    etcd's C{/v3/kv/range} or C{/v3/kv/put}), threads spread over C{ports}.
    """
    table = ",\n  ".join(_lua_string(b) for b in bodies)
    return _spread_setup(ports) + r"""
local PATH = %s
local BODIES = {
  %s
}
local json_headers = {["Content-Type"] = "application/json"}
function request()
  return wrk.format("POST", PATH, json_headers, BODIES[math.random(#BODIES)])
end
""" % (_lua_string(path), table) + _DONE


@dataclass
class WrkRun:
    """What one wrk run measured."""

    requests: int
    duration_s: float
    errors: Dict[str, int]
    latency_us: Dict[str, float]
    counters: Dict[str, int]
    bad_samples: List[str]
    argv: List[str]

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "rate": self.rate,
            "errors": self.errors,
            "latency_us": self.latency_us,
            "counters": self.counters,
            "bad_samples": self.bad_samples,
            "argv": self.argv,
        }


def wrk_binary() -> Optional[str]:
    return shutil.which("wrk")


def wrk_version() -> Optional[str]:
    binary = wrk_binary()
    if binary is None:
        return None
    # wrk prints its version with -v and exits 1 for want of a URL.
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip()


class WrkError(RuntimeError):
    """wrk failed or printed no result."""


def write_script(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name + ".lua")
    with open(path, "w") as f:
        f.write(text)
    return path


def run_wrk(
    port: int,
    script: str,
    connections: int,
    duration: float,
    threads: Optional[int] = None,
    timeout_s: float = 5.0,
    background: bool = False,
):
    """
    Run wrk against 127.0.0.1:C{port} for C{duration} seconds with the Lua
    file C{script}. Returns a L{WrkRun}; with C{background}, the running
    C{Popen} instead (finish it with L{finish_wrk}).
    """
    binary = wrk_binary()
    if binary is None:
        raise WrkError("wrk is not installed")
    threads = threads or 1
    argv = [
        binary,
        "-t%d" % threads,
        "-c%d" % connections,
        "-d%ds" % max(1, round(duration)),
        "--timeout", "%ds" % max(1, round(timeout_s)),
        "-s", script,
        "http://%s:%d/" % (HOST, port),
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    if background:
        process.argv = argv  # type: ignore[attr-defined]
        return process
    return finish_wrk(process, duration + timeout_s + 30, argv)


def finish_wrk(process: subprocess.Popen, timeout: float, argv: Optional[List[str]] = None) -> WrkRun:
    """Wait for a wrk process (killing it past C{timeout}) and parse its JSON."""
    argv = argv or getattr(process, "argv", [])
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise WrkError("wrk did not finish within %.0f s: %s" % (timeout, " ".join(argv)))
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): wrk runs in its own session, so it
        # would not get the signal; end it here.
        process.kill()
        process.wait()
        raise
    for line in out.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            return WrkRun(
                requests=data["requests"],
                duration_s=data["duration_us"] / 1e6,
                errors=data["errors"],
                latency_us=data["latency_us"],
                counters=data["counters"],
                bad_samples=data["bad_samples"],
                argv=list(argv),
            )
    raise WrkError(
        "wrk printed no result (exit %s): %s\n%s%s"
        % (process.returncode, " ".join(argv), out[-2000:], err[-2000:])
    )
