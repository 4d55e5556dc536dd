"""Example: durable steps in a Flask (blocking) handler with SyncStepClient.

Shows the client only; it never talks to anything but the sidecar URL it is given.

    flask --app examples/flask_app run --port 3000   # then route /api/* to it in the gateway
"""

from __future__ import annotations

import hashlib
import sys
from functools import partial
from pathlib import Path

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

try:
    import step_protocol  # noqa: F401  (installed with `pip install -e .`)
except ModuleNotFoundError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_protocol import SyncStepClient


def summarise(text: str) -> str:
    """Stands in for an expensive call (an LLM, a paid API) worth doing only once."""
    return text[:40] + ("…" if len(text) > 40 else "")


def create_app() -> Flask:
    app = Flask(__name__)
    # One per app: keeps a keep-alive connection to the sidecar per worker thread.
    steps = app.extensions["step_client"] = SyncStepClient()

    @app.post("/api/digest")
    def digest() -> ResponseReturnValue:
        # Outside the gateway (no Durable-* headers) ctx.durable is False and steps just run.
        ctx = steps.context(request.headers)
        paragraphs = [p for p in request.get_data(as_text=True).split("\n\n") if p.strip()]
        # The same id in a loop becomes "summary", "summary:1", "summary:2", …
        summaries = [ctx.step("summary", partial(summarise, p)) for p in paragraphs]
        # Outputs are JSON values; sync=True waits until the gateway has committed the step.
        receipt = ctx.step(
            "store",
            lambda: {"id": hashlib.sha256("".join(summaries).encode()).hexdigest()[:12]},
            sync=True,
        )
        return jsonify(run_id=ctx.run_id, attempt=ctx.attempt, summaries=summaries, **receipt)

    return app


app = create_app()
