"""Bitcoin Core's P2PInterface as responder: listens on 127.0.0.1, OS-chosen port, prints it."""

import sys

# Keep the source tree free of __pycache__.
sys.dont_write_bytecode = True

from framework import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("responder", sys.argv[1:]))
