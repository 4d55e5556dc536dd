"""The durable attempts' way out: a small keep-alive HTTP/1.1 client and header rewriting.

Knows nothing of runs or storage; the engine calls it, never the other way round.
"""

from gateway.upstream.pool import Origin, Pool, Response, UpstreamError, encode_head, origin

__all__ = ["Origin", "Pool", "Response", "UpstreamError", "encode_head", "origin"]
