"""Example: durable steps and a durable sleep in Flask (blocking) handlers with SyncStepClient.

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

from step_protocol import SyncStepClient, flask_register


def summarise(text: str) -> str:
    """Stands in for an expensive call (an LLM, a paid API) worth doing only once."""
    return text[:40] + ("…" if len(text) > 40 else "")


def create_app() -> Flask:
    app = Flask(__name__)
    # One per app: keeps a keep-alive connection to the sidecar per worker thread.
    steps = app.extensions["step_client"] = SyncStepClient()
    # Answers a `Suspend` (a sleep or wait not over yet) from any view with 202 JSON.
    flask_register(app)

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

    @app.post("/api/remind")
    def remind() -> ResponseReturnValue:
        ctx = steps.context(request.headers)
        text = ctx.step("draft", lambda: summarise(request.get_data(as_text=True)))
        # Behind the gateway this raises Suspend until the delay is over (flask_register
        # answers it; no worker thread is held meanwhile). Without the gateway it blocks.
        ctx.sleep("cooldown", seconds=float(request.args.get("delay", "60")))
        sent = ctx.step("send", lambda: {"sent": text})
        return jsonify(run_id=ctx.run_id, attempt=ctx.attempt, **sent)

    return app


app = create_app()
