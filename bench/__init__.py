"""Benchmarks: ``python -m bench.calls`` (call latency, throughput, start-up)."""
