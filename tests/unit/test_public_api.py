"""Pin step_protocol's public names: adding or removing one is a deliberate API change."""

from __future__ import annotations

import step_protocol

PUBLIC = [
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


def test_all_is_pinned() -> None:
    assert step_protocol.__all__ == PUBLIC


def test_every_public_name_exists_and_is_documented() -> None:
    for name in step_protocol.__all__:
        member = getattr(step_protocol, name)
        if callable(member):
            assert member.__doc__, f"{name} has no docstring"


def test_no_undeclared_public_names() -> None:
    """Whatever the package exposes without an underscore is either in __all__ or a module."""
    exposed = {n for n in vars(step_protocol) if not n.startswith("_")}
    assert exposed - set(step_protocol.__all__) <= {"client", "frameworks", "wire", "annotations"}


def test_exception_tree() -> None:
    assert issubclass(step_protocol.SidecarError, step_protocol.StepProtocolError)
    assert issubclass(step_protocol.StaleAttempt, step_protocol.SidecarError)
    # Suspending is not a failure: `except StepProtocolError` must not swallow it.
    assert not issubclass(step_protocol.Suspend, step_protocol.StepProtocolError)
    assert issubclass(step_protocol.Suspend, Exception)  # frameworks catch Exception only


def test_framework_helpers_need_no_framework() -> None:
    """Importing step_protocol does not import Flask or Starlette (aiohttp it needs anyway)."""
    import subprocess
    import sys

    code = "import sys, step_protocol; print(sorted({'flask', 'starlette'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
