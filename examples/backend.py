"""The example backend, run from a checkout: `step_protocol/demo.py` is its code.

    python examples/backend.py --port 3000 [--host 127.0.0.1] [--steps-sync]

An installed gateway runs the same backend as `python -m step_protocol.demo`, and
`durable-gateway demo` starts it for you.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import step_protocol  # noqa: F401  (installed with `pip install .`)
except ModuleNotFoundError:  # a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_protocol.demo import main

if __name__ == "__main__":
    main()
