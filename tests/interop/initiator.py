"""Bitcoin Core's P2PInterface as initiator: connects to 127.0.0.1:--port (v1 or v2)."""

import sys

# Keep the source tree free of __pycache__.
sys.dont_write_bytecode = True

from framework import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("initiator", sys.argv[1:]))
