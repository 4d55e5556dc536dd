"""The step protocol, version 2: wire spec (SPEC.md), codec (`wire`) and Python client.

Backends import from here; the gateway imports `step_protocol.wire` only.
"""

from step_protocol.client import (
    HeadersLike,
    RunContext,
    RunInfo,
    SidecarError,
    StaleAttempt,
    StepClient,
    StepProtocolError,
    Suspend,
    SuspendKind,
    SyncRunContext,
    SyncStepClient,
    parse_headers,
)
from step_protocol.frameworks import (
    aiohttp_middleware,
    flask_register,
    starlette_exception_handler,
)
from step_protocol.wire import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "HeadersLike",
    "RunContext",
    "RunInfo",
    "SidecarError",
    "StaleAttempt",
    "StepClient",
    "StepProtocolError",
    "Suspend",
    "SuspendKind",
    "SyncRunContext",
    "SyncStepClient",
    "aiohttp_middleware",
    "flask_register",
    "parse_headers",
    "starlette_exception_handler",
]
