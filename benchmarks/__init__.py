"""
kvtwist's side-by-side benchmark suite (targets: docs/performance.md).

Run it with C{python -m benchmarks} (or C{./run.sh bench}). It starts
kvcache and its peers (the bare twisted.web ceiling, a seed-style baseline,
a naive thread-per-GET Twisted server and, when installed, etcd's v3 JSON
gateway) as subprocesses on 127.0.0.1, loads them with wrk in interleaved
rounds and writes a JSON file of raw numbers and a Markdown report under
C{benchmarks/results/}.
"""

__all__: list = []
