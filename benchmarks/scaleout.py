"""
Scale-out (docs/scale-out.md): throughput of one versus two kvcache
nodes on the same etcd, on this machine.

One etcd (one member; three with C{--scaleout-members 3}) runs for the whole
measurement, and so does node A (C{twistd -n kvcache --store etcd://...}).
Node B is started fresh for each two-node block and stopped after it, so the
one-node runs have no second node following the writes through its watch.
Rounds interleave the layouts (1 then 2 nodes in odd rounds, 2 then 1 in even
ones, so neither always goes first) and medians over rounds are reported; each
round ends with etcd alone (its JSON gateway, no kvcache) under the same load
generator, for reference.

The load generator is one wrk with two threads in every layout: each thread
holds half the connections and is aimed at a node by the Lua script's setup()
(both at A for one node, one at A and one at B for two). So wrk itself costs
the same in both layouts, and its latency percentiles cover both nodes.

Every run also records where the CPU went: etcd's and each node's CPU time
from C{/proc/PID/stat}, wrk's from C{getrusage(RUSAGE_CHILDREN)} (wrk is the
only child reaped during a run), and the whole machine's from C{/proc/stat};
what the machine was busy with beyond ours is other people's work. On a
machine with few cores (two on the project's) etcd, the nodes and wrk share
them, so a 2-node/1-node ratio says something about kvcache only when the
cores were not already all busy: the report says, per workload, how idle they
were.

C{--scaleout-section-to PATH} writes the tables into the part of PATH between
L{BEGIN_MARK} and L{END_MARK} (docs/scale-out.md), leaving the rest alone.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from benchmarks.machine import load_average
from benchmarks.procs import HOST, HttpRequest, ProcessSet, Server, http_call
from benchmarks.servers.common import DOCUMENT, VALUE
from benchmarks.targets import JSON_HEADERS, START_TIMEOUT, KvcacheTarget, child_env
from benchmarks.wrk import WrkError, run_wrk, spread_kv_script, spread_post_script, write_script

#: etcd prefix of the nodes' data; etcd-alone writes go outside it, so the
#: nodes' watches never see them.
PREFIX = "/kvtwist-bench/"
DIRECT_PREFIX = "/kvtwist-bench-direct/"
READ_KEY = "scaleout/r/%05d"
WRITE_KEY = "scaleout/w/%04d"
#: PUTs overwrite keys of a bounded set, so etcd's data stays small.
WRITE_KEYS = 1000
WRK_THREADS = 2
#: Keys per preload batch: one batch is one etcd transaction, and etcd's
#: default --max-txn-ops is 128.
BATCH_KEYS = 100

BEGIN_MARK = "<!-- BEGIN scaleout results"
END_MARK = "<!-- END scaleout results -->"

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    """
    One load of the scale-out comparison.

    @ivar get_share: the share of requests that are GETs (the rest PUTs).
    @ivar direct: the etcd-alone run measured beside it, if any.
    """

    name: str
    label: str
    connections: int
    get_share: float
    consistent: bool = False
    direct: Optional[str] = None


WORKLOADS = (
    Workload("get", "GET of a committed key (cache hit)", 50, 1.0),
    Workload("get-consistent", "GET `?consistent=1` (a linearizable etcd read)", 50, 1.0, True, "etcd-range"),
    Workload("put", "`PUT /v1/kv/{key}`, small value (a one-op commit)", 16, 0.0, direct="etcd-put"),
    Workload("mix", "90 % cache-hit GET / 10 % PUT", 50, 0.9),
)
#: etcd alone: what each request is, and the connections (those of the
#: kvcache workload it stands beside).
DIRECT = {
    "etcd-range": ("`POST /v3/kv/range` of a committed key (linearizable)", 50),
    "etcd-put": ("`POST /v3/kv/put` of a small value", 16),
}


# -- CPU accounting ----------------------------------------------------------


def process_cpu_s(pid: int) -> Optional[float]:
    """User + system CPU seconds of process C{pid} (all its threads), or None if gone."""
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            data = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: count from its end.
    fields = data.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_s() -> Dict[str, float]:
    """The machine's CPU seconds so far, all cores: busy, steal and idle."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    return {
        "busy": (user + nice + system + irq + softirq) / CLOCK_TICKS,
        # Time the hypervisor gave our virtual cores to someone else.
        "steal": steal / CLOCK_TICKS,
        "idle": (idle + iowait) / CLOCK_TICKS,
    }


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def filesystem_of(path: str) -> Optional[str]:
    """The type of the filesystem holding C{path} (etcd syncs its log there)."""
    path = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, "%s (%s on %s)" % (parts[2], parts[0], mount)
    except OSError:
        return None
    return kind


# -- processes ---------------------------------------------------------------


def _free_ports(count: int) -> List[int]:
    sockets = []
    try:
        # Held open together, so the kernel cannot hand out one twice.
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_etcd(procs: ProcessSet, run_dir: str, members: int, binary: str) -> List[Server]:
    """Start a cluster of C{members} etcd members on loopback and wait until it is healthy."""
    ports = _free_ports(2 * members)
    names = ["m%d" % i for i in range(members)]
    peers = ["http://%s:%d" % (HOST, p) for p in ports[members:]]
    cluster = ",".join("%s=%s" % (n, p) for n, p in zip(names, peers))
    # etcd reads ETCD_* variables as flags.
    env = {k: v for k, v in child_env().items() if not k.startswith("ETCD_")}
    servers = []
    for name, client_port, peer in zip(names, ports, peers):
        client = "http://%s:%d" % (HOST, client_port)
        data_dir = os.path.join(run_dir, "scaleout-etcd-" + name)
        argv = [
            binary, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "kvtwist-bench",
            "--logger", "zap", "--log-level", "warn",
        ]
        servers.append(procs.start("etcd-" + name, argv, client_port,
                                   os.path.join(run_dir, "scaleout-etcd-%s.log" % name), cwd=run_dir, env=env))
    for server in servers:
        # 200 only once the cluster has a leader.
        server.wait_ready(HttpRequest("GET", "/health"), START_TIMEOUT)
    return servers


def start_node(procs: ProcessSet, run_dir: str, name: str, endpoints: List[str], extra: List[str]) -> Server:
    """Start C{twistd -n kvcache} on etcd and wait until C{/v1/readyz} answers 200."""
    target = KvcacheTarget(name, "", True, True,
                           list(extra) + ["--store", "etcd://" + ",".join(endpoints), "--etcd-prefix", PREFIX])
    server = target.start(procs, run_dir)
    server.wait_ready(HttpRequest("GET", "/v1/readyz"), START_TIMEOUT)
    return server


def preload(port: int, keys: int) -> None:
    """Commit the keys the GETs read, in batches of L{BATCH_KEYS}."""
    for first in range(0, keys, BATCH_KEYS):
        ops = [{"op": "set", "key": READ_KEY % i, "value": DOCUMENT} for i in range(first, min(keys, first + BATCH_KEYS))]
        status, body = http_call(port, HttpRequest("POST", "/v1/batch", json.dumps({"ops": ops}).encode(), JSON_HEADERS),
                                 timeout=30)
        if status != 200:
            raise RuntimeError("preloading keys: POST /v1/batch answered %d %r" % (status, body[:300]))


def warm(port: int, keys: int, passes: int = 5) -> None:
    """
    Write one key, so the write path has run before it is measured, then
    read every key through the node until one whole pass is served from
    its cache, so the measured GETs are cache hits. The first pass fills the
    cache; a further pass with no miss shows nothing emptied it meanwhile.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        # The write first: its watch event must not land after the reads.
        conn.request("PUT", "/v1/kv/" + WRITE_KEY % 0, body=VALUE, headers=JSON_HEADERS)
        response = conn.getresponse()
        body = response.read()
        if response.status not in (200, 201):
            raise RuntimeError("warming: PUT answered %d %r" % (response.status, body[:200]))
        for _ in range(passes):
            misses = scrape(port)["cache_misses"]
            for i in range(keys):
                conn.request("GET", "/v1/kv/" + READ_KEY % i)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError("warming the cache: GET %s answered %d %r" % (READ_KEY % i, response.status, body[:200]))
            if scrape(port)["cache_misses"] == misses:
                break
        else:
            raise RuntimeError("warming the cache: still missing after %d passes over %d keys" % (passes, keys))
    finally:
        conn.close()


def scrape(port: int) -> Dict[str, float]:
    """
    From the node's C{/v1/metrics}: requests answered on C{/v1/kv/{key}} (and
    how many were not 2xx), and its cache hits and misses.
    """
    status, body = http_call(port, HttpRequest("GET", "/v1/metrics"))
    if status != 200:
        raise RuntimeError("GET /v1/metrics answered %d" % (status,))
    out = {"kv_requests": 0.0, "kv_not_2xx": 0.0, "cache_hits": 0.0, "cache_misses": 0.0}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        # Label values hold braces (route="/v1/kv/{key}"): split at the last space.
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if name == "kvtwist_http_requests_total" and 'route="/v1/kv/{key}"' in series:
            out["kv_requests"] += float(value)
            if 'status="2' not in series:
                out["kv_not_2xx"] += float(value)
        elif name == "kvtwist_cache_hits_total":
            out["cache_hits"] = float(value)
        elif name == "kvtwist_cache_misses_total":
            out["cache_misses"] = float(value)
    return out


def scrape_etcd(members: List[Server]) -> Dict[str, float]:
    """
    From every member's C{/metrics}, summed: gRPC calls started by method
    (the JSON gateway's requests become gRPC calls inside etcd) and WAL
    syncs, so a run can say how many etcd operations one request cost.
    """
    out: Dict[str, float] = {}
    for member in members:
        status, body = http_call(member.port, HttpRequest("GET", "/metrics"))
        if status != 200:
            raise RuntimeError("etcd GET /metrics answered %d" % (status,))
        for line in body.decode("utf-8", "replace").splitlines():
            series, _, value = line.rpartition(" ")
            if series.startswith("grpc_server_started_total{"):
                method = series.split('grpc_method="', 1)[1].split('"', 1)[0]
                out[method] = out.get(method, 0.0) + float(value)
            elif series == "etcd_disk_wal_fsync_duration_seconds_count":
                out["wal-sync"] = out.get("wal-sync", 0.0) + float(value)
    return out


# -- one run -----------------------------------------------------------------


def measure(script: str, port: int, connections: int, duration: float,
            nodes: Dict[str, Server], etcd: List[Server]) -> dict:
    """
    One wrk run of C{script} (URL port C{port}; the script aims its threads),
    with the CPU each process used and, per node, what its metrics counted.
    """
    before = {name: scrape(s.port) for name, s in nodes.items()}
    etcd_before = scrape_etcd(etcd)
    watched = {"etcd": [m.pid for m in etcd]}
    watched.update({"node-" + name: [s.pid] for name, s in nodes.items()})

    def cpu() -> Dict[str, float]:
        return {role: sum(process_cpu_s(pid) or 0.0 for pid in pids) for role, pids in watched.items()}

    cpu0, machine0, wrk0, t0 = cpu(), machine_cpu_s(), children_cpu_s(), time.monotonic()
    try:
        entry = run_wrk(port, script, connections, duration, threads=WRK_THREADS).as_dict()
    except WrkError as e:
        entry = {"error": str(e)}
    wall = time.monotonic() - t0
    cpu1, machine1, wrk1 = cpu(), machine_cpu_s(), children_cpu_s()
    used = {role: cpu1[role] - cpu0[role] for role in watched}
    used["wrk"] = wrk1 - wrk0
    busy = machine1["busy"] - machine0["busy"]
    used["others"] = max(0.0, busy - sum(used.values()))
    used["steal"] = machine1["steal"] - machine0["steal"]
    used["idle"] = machine1["idle"] - machine0["idle"]
    entry["wall_s"] = wall
    entry["cpu_s"] = used
    entry["load_average"] = load_average()
    etcd_after = scrape_etcd(etcd)
    entry["etcd_ops"] = {k: v - etcd_before.get(k, 0.0) for k, v in etcd_after.items() if v != etcd_before.get(k, 0.0)}
    entry["nodes"] = {}
    for name, s in nodes.items():
        after = scrape(s.port)
        entry["nodes"][name] = {k: after[k] - before[name][k] for k in after}
    return entry


def _say_entry(say: Callable[[str], None], label: str, entry: dict) -> None:
    if "error" in entry:
        say("scale-out %s: ERROR %s" % (label, entry["error"].splitlines()[0]))
        return
    lat, wall = entry["latency_us"], entry["wall_s"]
    cores = ", ".join("%s %.2f" % (k, v / wall) for k, v in entry["cpu_s"].items())
    say("scale-out %-22s %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms  errors %d  cores: %s" % (
        label, entry["rate"], lat["p50"] / 1e3, lat["p99"] / 1e3, sum(entry["errors"].values()), cores))


# -- the measurement ---------------------------------------------------------


def run(cfg, procs: ProcessSet, run_dir: str, results: dict, say: Callable[[str], None]) -> None:
    """Measure 1 vs 2 nodes (and etcd alone); the numbers go in C{results["scaleout"]}."""
    out: Dict[str, object] = {
        "etcd_members": cfg.scaleout_members,
        # What nproc prints: the cores this process may run on.
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_average(),
        "rounds": cfg.rounds,
        "duration_s": cfg.duration,
        "read_keys": cfg.scaleout_read_keys,
        "write_keys": WRITE_KEYS,
        "value_bytes": len(VALUE),
        "wrk_threads": WRK_THREADS,
        "kvcache_args": list(cfg.kvcache_args),
        "workloads": {w.name: {"label": w.label, "connections": w.connections} for w in WORKLOADS},
        "direct": {name: {"label": label, "connections": conns} for name, (label, conns) in DIRECT.items()},
        "node_startup_s": [],
        "raw": [],
    }
    results["scaleout"] = out
    binary = shutil.which("etcd")
    if binary is None:
        out["skipped"] = "no etcd binary on PATH (Debian package etcd-server)"
        results["skipped"]["scaleout"] = out["skipped"]
        return
    try:
        _run(cfg, procs, run_dir, out, binary, say)
    except Exception as e:  # reported, like the other measurements' failures
        out["error"] = "%s: %s" % (type(e).__name__, e)
        say("scale-out failed: %s" % (out["error"].splitlines()[0],))
    finally:
        out["load_average_at_end"] = load_average()


def _run(cfg, procs: ProcessSet, run_dir: str, out: dict, binary: str, say: Callable[[str], None]) -> None:
    etcd = start_etcd(procs, run_dir, cfg.scaleout_members, binary)
    out["etcd_data_fs"] = filesystem_of(run_dir)
    endpoints = ["%s:%d" % (HOST, m.port) for m in etcd]
    say("scale-out: etcd with %d member(s) on %s" % (len(etcd), ", ".join(endpoints)))
    started = time.monotonic()
    a = start_node(procs, run_dir, "node-a", endpoints, cfg.kvcache_args)
    out["node_startup_s"].append(time.monotonic() - started)
    keys = cfg.scaleout_read_keys
    preload(a.port, keys)
    warm(a.port, keys)

    def kv_script(workload: Workload, ports: List[int], tag: str) -> str:
        read_path = "/v1/kv/" + READ_KEY + ("?consistent=1" if workload.consistent else "")
        text = spread_kv_script(ports, workload.get_share, read_path, keys, "/v1/kv/" + WRITE_KEY, WRITE_KEYS, VALUE)
        return write_script(run_dir, "scaleout-%s-%s" % (workload.name, tag), text)

    if cfg.warmup > 0:
        for w in (WORKLOADS[0], WORKLOADS[2]):
            run_wrk(a.port, kv_script(w, [a.port], "warmup"), w.connections, cfg.warmup, threads=WRK_THREADS)
        say("scale-out warm-up done")

    direct_scripts = _direct_scripts(run_dir, [m.port for m in etcd], keys)
    for round_no in range(1, cfg.rounds + 1):
        for layout in ((1, 2) if round_no % 2 else (2, 1)):
            nodes = {"a": a}
            if layout == 2:
                # B starts on the next member, as docs/scale-out.md advises.
                started = time.monotonic()
                nodes["b"] = start_node(procs, run_dir, "node-b", endpoints[1:] + endpoints[:1], cfg.kvcache_args)
                out["node_startup_s"].append(time.monotonic() - started)
                warm(nodes["b"].port, keys)
            try:
                ports = [s.port for s in nodes.values()]
                for w in WORKLOADS:
                    script = kv_script(w, ports, "%d-nodes" % layout)
                    entry = measure(script, a.port, w.connections, cfg.duration, nodes, etcd)
                    out["raw"].append(dict(entry, round=round_no, layout=str(layout), workload=w.name))
                    _say_entry(say, "%s x%d node%s" % (w.name, layout, "s" if layout > 1 else ""), entry)
            finally:
                if "b" in nodes:
                    procs.stop(nodes["b"])
        # Node A stays up but idle: its CPU is counted, not left in "others".
        for name, (_, conns) in DIRECT.items():
            entry = measure(direct_scripts[name], etcd[0].port, conns, cfg.duration, {"a": a}, etcd)
            out["raw"].append(dict(entry, round=round_no, layout="etcd", workload=name))
            _say_entry(say, name + " alone", entry)
    procs.stop(a)
    procs.stop_many(etcd)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _direct_scripts(run_dir: str, etcd_ports: List[int], keys: int) -> Dict[str, str]:
    """wrk scripts for etcd alone: ranges of the keys the nodes read, puts beside the nodes' prefix."""
    ranges = [json.dumps({"key": _b64((PREFIX + "kv/" + READ_KEY % i).encode())}) for i in range(keys)]
    puts = [json.dumps({"key": _b64((DIRECT_PREFIX + WRITE_KEY % i).encode()), "value": _b64(VALUE)})
            for i in range(WRITE_KEYS)]
    return {
        "etcd-range": write_script(run_dir, "scaleout-etcd-range", spread_post_script(etcd_ports, "/v3/kv/range", ranges)),
        "etcd-put": write_script(run_dir, "scaleout-etcd-put", spread_post_script(etcd_ports, "/v3/kv/put", puts)),
    }


# -- medians and ratios ------------------------------------------------------


def _median(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(scaleout: Optional[dict]) -> Optional[dict]:
    """Medians over rounds per (layout, workload), and the 2-node/1-node ratios."""
    if not scaleout or "raw" not in scaleout:
        return None
    groups: Dict[tuple, List[dict]] = {}
    for r in scaleout["raw"]:
        groups.setdefault((r["layout"], r["workload"]), []).append(r)
    runs: Dict[str, Dict[str, dict]] = {}
    for (layout, workload), entries in groups.items():
        ok = [r for r in entries if "error" not in r]
        roles = sorted({role for r in ok for role in r["cpu_s"]})
        node_requests = {n: _median([r["nodes"][n]["kv_requests"] for r in ok if n in r["nodes"]])
                         for n in sorted({n for r in ok for n in r["nodes"]})}
        total_node_requests = [sum(v["kv_requests"] for v in r["nodes"].values()) for r in ok]
        node_cpu = [sum(v for k, v in r["cpu_s"].items() if k.startswith("node-")) for r in ok]
        hits = sum(v["cache_hits"] for r in ok for v in r["nodes"].values())
        misses = sum(v["cache_misses"] for r in ok for v in r["nodes"].values())
        runs.setdefault(layout, {})[workload] = {
            "rounds": len(ok),
            "failed_runs": len(entries) - len(ok),
            "errors": [r["error"].splitlines()[0] for r in entries if "error" in r],
            "rate": _median([r["rate"] for r in ok]),
            "p50_ms": _median([r["latency_us"]["p50"] / 1e3 for r in ok]),
            "p99_ms": _median([r["latency_us"]["p99"] / 1e3 for r in ok]),
            "wrk_errors": sum(sum(r["errors"].values()) for r in ok),
            "not_2xx": sum(v["kv_not_2xx"] for r in ok for v in r["nodes"].values()),
            # Average cores busy during the run, by process (or "others", "steal", "idle").
            "cores": {role: _median([r["cpu_s"].get(role, 0.0) / r["wall_s"] for r in ok]) for role in roles},
            "node_requests": node_requests,
            "node_cpu_us_per_request": _median([1e6 * c / n if n else None for c, n in zip(node_cpu, total_node_requests)]),
            # etcd operations per request wrk completed (wal-sync: on every member).
            "etcd_ops_per_request": {
                op: _median([r.get("etcd_ops", {}).get(op, 0.0) / r["requests"] for r in ok if r["requests"]])
                for op in sorted({op for r in ok for op in r.get("etcd_ops", {})})},
            # Per request wrk completed: etcd alone has no node to count them.
            "etcd_cpu_us_per_request": _median([1e6 * r["cpu_s"]["etcd"] / r["requests"] if r["requests"] else None
                                                for r in ok]),
            "cache_hit_share": hits / (hits + misses) if hits + misses else None,
            "load_average_1m": _median([r["load_average"][0] for r in ok if r.get("load_average")]),
        }
    ratios: Dict[str, dict] = {}
    for w in WORKLOADS:
        one, two = runs.get("1", {}).get(w.name), runs.get("2", {}).get(w.name)
        if not one or not two:
            continue
        ratios[w.name] = {
            key: (two[key] / one[key]) if one.get(key) and two.get(key) is not None else None
            for key in ("rate", "p50_ms", "p99_ms")
        }
    return {"runs": runs, "ratios": ratios}


# -- the report --------------------------------------------------------------


def _n(value: Optional[float], digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return "{:,.0f}".format(value)
    return "%.*f" % (digits, value)


def _x(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.2f x" % value


def _reading(workload: Workload, ratio: Optional[float], one: dict, two: dict, nproc: int) -> str:
    """
    One generated sentence per workload: the ratio, whether the one node
    was the limit (a Python process uses at most one core), and whether the
    cores were saturated during the 2-node runs (then the ratio measures the
    machine, not kvcache).
    """
    idle = two["cores"].get("idle")
    if ratio is None or idle is None:
        return "- %s: not measured." % (workload.name,)
    c1, c2 = one["cores"], two["cores"]
    text = "- %s: 2 nodes gave %s the requests/s of 1 node. With 1 node, node A used %s cores" % (
        workload.name, _x(ratio), _n(c1.get("node-a")))
    if (c1.get("node-a") or 0) >= 0.85:
        text += " (a Python process uses at most one: the node was the limit)"
    if c1.get("idle") is not None and nproc:
        text += " and %.0f %% of the cores were idle" % (100 * c1["idle"] / nproc)
    text += ". With 2 nodes the nodes used %s cores, etcd %s, wrk %s, other work %s, and %.0f %% of the %d cores were idle" % (
        _n((c2.get("node-a") or 0) + (c2.get("node-b") or 0)), _n(c2.get("etcd")), _n(c2.get("wrk")),
        _n(c2.get("others")), 100 * idle / nproc if nproc else 0, nproc)
    if nproc and idle / nproc < 0.1:
        text += ": saturated, so the ratio is bounded by the cores this machine had left, not by kvcache."
    else:
        text += ": CPU was not the only limit."
    others1, others2 = c1.get("others"), c2.get("others")
    if others1 is not None and others2 is not None and others1 - others2 >= 0.15:
        text += (" Other work got %s cores during the 1-node runs and %s during the 2-node runs: on a"
                 " contended machine the scheduler shares the cores among runnable processes, so a"
                 " second busy node also takes CPU from other work, which inflates the ratio."
                 % (_n(others1), _n(others2)))
    node1, node2 = one.get("node_cpu_us_per_request"), two.get("node_cpu_us_per_request")
    if node1 and node2:
        text += (" Per request the nodes spent %s µs of CPU with 1 node and %s µs with 2 (so one node"
                 " on one core of this CPU serves about %s requests/s of this kind)" % (
                     _n(node1, 0), _n(node2, 0), _n(1e6 / node2, 0)))
        etcd2 = two.get("etcd_cpu_us_per_request")
        if etcd2 and etcd2 >= 20:
            text += ", and etcd spent %s µs (about %s requests/s per etcd core)" % (_n(etcd2, 0), _n(1e6 / etcd2, 0))
        text += "."
    return text


def section(results: dict) -> str:
    """The scale-out report: Markdown for results/<stamp>.md and the docs section."""
    so = results.get("scaleout")
    if not so:
        return "_Not run (opt-in: `--scaleout`, or `--only scaleout`)._"
    if so.get("skipped"):
        return "_Skipped: %s._" % so["skipped"]
    summary = (results.get("summary") or {}).get("scaleout") or summarise(so)
    nproc = so["nproc"]
    machine = results.get("machine") or {}
    loads = [so.get("load_average_at_start"), so.get("load_average_at_end")]
    lines = [
        "Run `%s` of `%s` (commit %s%s): %s interleaved round(s) of %g s per run, medians over rounds."
        % (results.get("stamp"), results["command"]["run_sh"], (machine.get("git_commit") or "?")[:10],
           ", server code modified" if machine.get("server_tree_dirty") else "", so["rounds"], so["duration_s"]),
        "",
        "- etcd: %d member(s), %s, data on %s." % (so["etcd_members"], machine.get("etcd") or "etcd",
                                                   so.get("etcd_data_fs") or "?"),
        "- nodes: `twistd -n kvcache --store etcd://... --etcd-prefix %s%s` (access log: %s); "
        "node B is started fresh for every 2-node block." % (
            PREFIX, "".join(" " + a for a in so["kvcache_args"]),
            "as set by the arguments" if so["kvcache_args"] else "on, twistd's default"),
        "- load: one wrk (%s), %d threads each holding half the connections, both threads on node A "
        "for 1 node, one per node for 2; GETs spread over %d committed keys, PUTs of a %d-byte JSON "
        "value over %d keys." % (machine.get("wrk") or "wrk", so["wrk_threads"], so["read_keys"],
                                so["value_bytes"], so["write_keys"]),
        "- machine: %s, `nproc` %d; load average %s at the start, %s at the end%s." % (
            machine.get("cpu") or "?", nproc, loads[0], loads[1],
            (" (**busy**: other work shared the cores)"
             if any(l and l[0] >= nproc / 2 for l in loads) else "")),
        "",
    ]
    if so.get("error"):
        lines += ["**The measurement failed:** `%s`" % so["error"].splitlines()[0], ""]
    if not summary or not summary["runs"]:
        return "\n".join(lines + ["_No runs completed._"])
    runs, ratios = summary["runs"], summary["ratios"]
    one, two, alone = runs.get("1", {}), runs.get("2", {}), runs.get("etcd", {})
    lines += [
        "| workload | conns | 1 node req/s | 2 nodes req/s | 2 / 1 | 1 node p50 / p99 ms | 2 nodes p50 / p99 ms | etcd alone req/s (p50 / p99 ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in WORKLOADS:
        a, b = one.get(w.name) or {}, two.get(w.name) or {}
        d = alone.get(w.direct) if w.direct else None
        lines.append("| %s | %d | %s | %s | %s | %s / %s | %s / %s | %s |" % (
            w.label, w.connections, _n(a.get("rate")), _n(b.get("rate")), _x((ratios.get(w.name) or {}).get("rate")),
            _n(a.get("p50_ms")), _n(a.get("p99_ms")), _n(b.get("p50_ms")), _n(b.get("p99_ms")),
            "%s (%s / %s)" % (_n(d.get("rate")), _n(d.get("p50_ms")), _n(d.get("p99_ms"))) if d else "-"))
    lines += [
        "",
        "Where the CPU went: average cores busy during each run (of %d), by process (`/proc/PID/stat`; "
        "wrk from `getrusage`); *others* is the rest of the machine's busy time (`/proc/stat`): other "
        "people's processes and kernel work not charged to ours. *steal* is time the hypervisor gave "
        "our virtual cores to someone else. Node CPU per request = the nodes' CPU time / the requests "
        "their metrics counted; etcd CPU per request = etcd's CPU time / the requests wrk completed; etcd ops = gRPC calls "
        "started in etcd (its JSON gateway's requests become gRPC calls) and WAL syncs (`wal-sync`, "
        "counted on every member), per request wrk completed (from etcd's `/metrics`; requests still "
        "in flight when a run ends make both per-request etcd figures read a little high). "
        "Per-request CPU does not depend on how many cores the run got, so it is the figure to "
        "carry to other machines." % (nproc,),
        "",
        "| workload | layout | etcd | node A | node B | wrk | others | steal | idle | node CPU µs / request | etcd CPU µs / request | etcd ops / request | node B's share of requests | cache hits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in WORKLOADS:
        for layout, name in (("1", "1 node"), ("2", "2 nodes")):
            m = runs.get(layout, {}).get(w.name)
            if m:
                lines.append(_cpu_row(w.name, name, m))
    for name in DIRECT:
        m = alone.get(name)
        if m:
            lines.append(_cpu_row(name, "etcd alone", m))
    lines += ["", "Reading the ratios (generated from the numbers above):", ""]
    for w in WORKLOADS:
        b = two.get(w.name)
        if b:
            lines.append(_reading(w, (ratios.get(w.name) or {}).get("rate"), one.get(w.name) or {"cores": {}}, b, nproc))
    problems = []
    for layout, by_workload in runs.items():
        for workload, m in by_workload.items():
            if m["wrk_errors"] or m["not_2xx"] or m["failed_runs"]:
                problems.append("%s (%s): %d wrk errors, %d non-2xx answers, %d failed runs %s" % (
                    workload, layout, m["wrk_errors"], m["not_2xx"], m["failed_runs"], "; ".join(m["errors"])))
    lines += ["", "Errors: " + ("; ".join(problems) if problems else "none (no wrk errors, every answer 2xx, no failed run)."), ""]
    return "\n".join(lines)


def _cpu_row(workload: str, layout: str, m: dict) -> str:
    c = m["cores"]
    requests = m.get("node_requests") or {}
    total = sum(v for v in requests.values() if v)
    share = "%.0f %%" % (100 * requests["b"] / total) if requests.get("b") is not None and total else "-"
    hits = "%.1f %%" % (100 * m["cache_hit_share"]) if m.get("cache_hit_share") is not None else "-"
    # Operations under 0.01 per request (watch setups, the scrapes' own) are noise here.
    ops = ", ".join("%s %.2f" % (op, v) for op, v in (m.get("etcd_ops_per_request") or {}).items() if v and v >= 0.01)
    return "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        workload, layout, _n(c.get("etcd")), _n(c.get("node-a")), _n(c.get("node-b")) if "node-b" in c else "-",
        _n(c.get("wrk")), _n(c.get("others")), _n(c.get("steal")), _n(c.get("idle")),
        _n(m.get("node_cpu_us_per_request"), 0), _n(m.get("etcd_cpu_us_per_request"), 0), ops or "-", share, hits)


def check_section(path: str) -> None:
    """Raise ValueError unless C{path} has exactly one marked section to write into."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    begins = [i for i, l in enumerate(lines) if l.startswith(BEGIN_MARK)]
    ends = [i for i, l in enumerate(lines) if l.strip() == END_MARK]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError("%s needs one line starting %r and, after it, one line %r" % (path, BEGIN_MARK, END_MARK))


def write_section(path: str, text: str) -> None:
    """Replace what lies between the markers of C{path} with C{text}; the rest stays."""
    check_section(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    begin = next(i for i, l in enumerate(lines) if l.startswith(BEGIN_MARK))
    end = next(i for i, l in enumerate(lines) if l.strip() == END_MARK)
    new = lines[:begin + 1] + [""] + text.strip("\n").splitlines() + [""] + lines[end:]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(new) + "\n")
    os.replace(tmp, path)
