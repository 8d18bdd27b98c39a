//! A regtest `bitcoind` for interop tests, built from Bitcoin Core's source
//! once per machine by `.ci/bitcoind` (the first run takes several minutes;
//! later runs reuse the cache). The node runs in a fresh data directory on
//! loopback ports and is ended by its PID when dropped. [`NodeSetup`] starts
//! it elsewhere (inside a lab host's namespace), with v1 only, or with more
//! configuration lines.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::sockets::free_port;

/// The directory holding `bitcoind` and `bitcoin-cli`, building them on first use.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/bitcoind");
        let output = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "building bitcoind with {} failed ({}): it needs cmake, a C++ compiler, \
             libboost-dev, libevent-dev and pkg-config (.ci/run installs them)",
            script.display(),
            output.status
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
    .clone()
}

/// How a node is started: where, which transports, what more configuration.
pub struct NodeSetup {
    /// `-v2transport`: BIP324 offered and accepted (true), or v1 only.
    pub v2transport: bool,
    /// More lines for the `[regtest]` section of `bitcoin.conf`.
    pub extra_conf: Vec<String>,
    /// Makes the command for a program (`bitcoind`, `bitcoin-cli`): plain
    /// `Command::new` by default, or one that enters a lab namespace.
    pub command: Box<dyn Fn(&Path) -> Command + Send + Sync>,
}

impl Default for NodeSetup {
    fn default() -> Self {
        NodeSetup {
            v2transport: true,
            extra_conf: Vec::new(),
            command: Box::new(|program| Command::new(program)),
        }
    }
}

/// One running regtest node.
pub struct Bitcoind {
    child: Child,
    pub datadir: tempfile::TempDir,
    pub p2p: SocketAddr,
    pub rpc_port: u16,
    command: Box<dyn Fn(&Path) -> Command + Send + Sync>,
}

impl Bitcoind {
    /// Starts a node listening on loopback with v2 transport on, and waits
    /// (at most 60 s) until its RPC answers.
    pub fn start() -> Bitcoind {
        Bitcoind::start_with(NodeSetup::default())
    }

    /// Starts a node as `setup` says, on loopback (of the namespace its
    /// command runs in), and waits (at most 60 s) until its RPC answers.
    pub fn start_with(setup: NodeSetup) -> Bitcoind {
        let bin = bin_dir();
        let datadir = tempfile::tempdir().expect("a data directory");
        let p2p_port = free_port();
        let rpc_port = free_port();
        let mut conf = std::fs::File::create(datadir.path().join("bitcoin.conf")).unwrap();
        write!(
            conf,
            "regtest=1\nserver=1\nprinttoconsole=0\n\
             [regtest]\nlisten=1\nbind=127.0.0.1:{p2p_port}\nrpcbind=127.0.0.1\n\
             rpcport={rpc_port}\nrpcallowip=127.0.0.1\nv2transport={}\ndebug=net\n\
             dnsseed=0\nfixedseeds=0\ndiscover=0\nlistenonion=0\nnatpmp=0\n",
            u8::from(setup.v2transport)
        )
        .unwrap();
        for line in &setup.extra_conf {
            writeln!(conf, "{line}").unwrap();
        }
        drop(conf);
        let child = (setup.command)(&bin.join("bitcoind"))
            .arg(format!("-datadir={}", datadir.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting bitcoind");
        let node = Bitcoind {
            child,
            datadir,
            p2p: SocketAddr::from(([127, 0, 0, 1], p2p_port)),
            rpc_port,
            command: setup.command,
        };
        let ready = node.cli(&["-rpcwait", "-rpcwaittimeout=60", "getnetworkinfo"]);
        assert!(
            ready.contains("\"version\""),
            "bitcoind did not start: {ready}"
        );
        node
    }

    /// Runs `bitcoin-cli ARGS` against this node and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = (self.command)(&bin_dir().join("bitcoin-cli"))
            .arg(format!("-datadir={}", self.datadir.path().display()))
            .arg(format!("-rpcport={}", self.rpc_port))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running bitcoin-cli");
        assert!(
            output.status.success(),
            "bitcoin-cli {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The node's debug log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.datadir.path().join("regtest/debug.log")).unwrap_or_default()
    }

    /// Waits (at most `limit`) until the debug log has a line containing
    /// `needle`, and returns that line.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Some(line.to_string());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn datadir(&self) -> &Path {
        self.datadir.path()
    }

    /// The node's RPC cookie file (written once the RPC server is up).
    pub fn cookie(&self) -> PathBuf {
        self.datadir.path().join("regtest/.cookie")
    }

    /// The node's RPC URL (loopback, no credentials).
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stream whose shutdown does nothing: a handshake run over `&mut
/// KeepOpen(stream)` ends without closing the connection, so a test can ask
/// the node about the peer afterwards and see the node end it.
pub struct KeepOpen<S>(pub S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for KeepOpen<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for KeepOpen<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
