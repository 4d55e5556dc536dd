"""Benchmark harness: the gateway against a direct backend, a minimal proxy and nginx.

Measures only; never imported by the gateway or by `step_protocol`.
"""
