"""`python -m gateway` → the command line."""

import sys

try:
    from gateway.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the command line: no traceback
    sys.exit(130)

sys.exit(main())
