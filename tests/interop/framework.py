"""Loads Bitcoin Core's Python P2P test framework and runs one handshake with it.

The framework ships inside the PyPI package `warnet` (see
.ci/python-requirements.txt) under `resources/scenarios/test_framework`.
PUNCHSCOPE_TEST_FRAMEWORK may point at another directory that contains a
`test_framework` package (e.g. a Bitcoin Core checkout's test/functional).

Output, one "KEY value" line each, flushed at once, for tests/btc_interop.rs.
Exit codes: 0 handshake seen complete, 1 it was not, 3 framework missing.
"""

import os
import sys
import threading
import time

MISSING = 3
INSTALL_HINT = (
    "Bitcoin Core's Python test framework was not found. Install it with "
    "`python3 -m pip install -r .ci/python-requirements.txt` (it ships inside "
    "the PyPI package warnet), or set PUNCHSCOPE_TEST_FRAMEWORK to a directory "
    "containing the test_framework package."
)


def load():
    """Puts the framework on sys.path and returns its p2p and messages modules."""
    candidates = []
    if os.environ.get("PUNCHSCOPE_TEST_FRAMEWORK"):
        candidates.append(os.environ["PUNCHSCOPE_TEST_FRAMEWORK"])
    try:
        import resources  # the warnet package's data directory

        for path in resources.__path__:
            candidates.append(os.path.join(path, "scenarios"))
    except ImportError:
        pass
    for path in candidates:
        if os.path.isfile(os.path.join(path, "test_framework", "p2p.py")):
            sys.path.insert(0, path)
            break
    try:
        from test_framework import messages, p2p
    except ImportError as err:
        print(f"ERROR {INSTALL_HINT} ({err})", flush=True)
        sys.exit(MISSING)
    return p2p, messages


def say(key, value):
    print(f"{key} {value}", flush=True)


def parse_args(argv):
    args = {"transport": "v1", "network": "mainnet", "port": "0", "timeout": "20"}
    it = iter(argv)
    for flag in it:
        if not flag.startswith("--"):
            raise SystemExit(f"unexpected argument {flag!r}")
        args[flag[2:]] = next(it)
    return args


def run(role, argv):
    """role: "initiator" (connects to --port) or "responder" (listens)."""
    p2p, _messages = load()
    args = parse_args(argv)
    v2 = args["transport"] == "v2"
    net = args["network"]
    timeout = float(args["timeout"])

    thread = p2p.NetworkThread()
    thread.daemon = True
    thread.start()
    peer = p2p.P2PInterface()
    try:
        if role == "initiator":
            connect = peer.peer_connect(
                dstaddr="127.0.0.1",
                dstport=int(args["port"]),
                net=net,
                timeout_factor=1,
                supports_v2_p2p=v2,
                send_version=True,
            )
            connect()
        else:
            listening = threading.Event()
            # peer_accept_connection prepares the v1/v2 state; its own listen
            # call would pick a fixed port, so listen on an OS-chosen one.
            peer.peer_accept_connection(
                0, net=net, timeout_factor=1, supports_v2_p2p=v2, reconnect=False
            )
            p2p.NetworkThread.listen(
                peer, lambda addr, port: listening.set(), port=0, addr="127.0.0.1"
            )
            if not listening.wait(timeout):
                say("ERROR", "listener did not start")
                return 1
            server = p2p.NetworkThread.listeners[("127.0.0.1", 0)]
            say("PORT", server.sockets[0].getsockname()[1])

        deadline = time.monotonic() + timeout
        done = False
        while time.monotonic() < deadline and not done:
            with p2p.p2p_lock:
                done = "verack" in peer.last_message
            time.sleep(0.02)
        if not done:
            say("ERROR", "no verack before the deadline")
            return 1
        with p2p.p2p_lock:
            version = peer.last_message["version"]
            agent = version.strSubVer
            say("PEER_USER_AGENT", agent.decode() if isinstance(agent, bytes) else agent)
            say("PEER_VERSION", version.nVersion)
            say("PEER_SERVICES", version.nServices)
            say("PEER_RELAY", int(version.relay))
            say("TRANSPORT", "v2" if peer.supports_v2_p2p else "v1")
            if peer.supports_v2_p2p:
                say("SESSION_ID", peer.v2_state.peer["session_id"].hex())
        # Our side pings after verack; wait (bounded) until it hangs up.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and peer.is_connected:
            time.sleep(0.02)
        with p2p.p2p_lock:
            say("PINGS_ANSWERED", peer.message_count.get("ping", 0))
        say("DONE", 1)
        return 0
    finally:
        peer.peer_disconnect()
        thread.close(timeout=5)
