"""
Small servers written for the benchmark: the ceiling, the seed-style
baseline and the naive thread-per-GET design. Each module runs as
C{python -m benchmarks.servers.NAME --port P ...} and serves 127.0.0.1 only.
"""

__all__: list = []
