//! Lab test support: unique lab names, root check, a plain-text endpoint
//! reflector in the internet namespace, blocking std sockets bound the way
//! hole punching binds them, the binary under test run in a namespace, and
//! the coordinated runs of it: a plan file, the echo servers, `serve
//! rendezvous`, a volunteer's `probe`, a two-NAT scenario.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use punchscope::lab::{netns, Lab, LabOptions, Scenario};

/// Lab tests need root (namespaces, TUN). They fail rather than skip, so CI can never pass without running them.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "lab tests need root (network namespaces and /dev/net/tun): run `sudo -E cargo test`"
    );
}

/// A lab name no other test (or test process) uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{}{tag}{n}", std::process::id() % 100_000)
}

pub fn start_lab(tag: &str, scenario: &str) -> Lab {
    require_root();
    let scenario = Scenario::parse(scenario).expect("test scenario parses");
    Lab::start(
        scenario,
        LabOptions {
            name: unique_name(tag),
            event_log: None,
        },
    )
    .expect("lab starts")
}

/// The namespaces of one lab still present.
pub fn namespaces_of(lab_name: &str) -> Vec<String> {
    let prefix = format!("{lab_name}-");
    netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

pub fn ep(s: &str) -> SocketAddrV4 {
    s.parse().expect("endpoint literal")
}

/// A listener on several endpoints in the internet namespace. Each connection
/// gets one plain-text line, the peer endpoint it saw; then every byte it
/// sends is echoed back. Not punchscope's echo protocol (that is
/// `serve echo`, NDJSON): a bare reflector for tests that look at NAT
/// behaviour with ordinary sockets.
pub struct EndpointReflector {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EndpointReflector {
    pub fn start(lab: &Lab, endpoints: &[&str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for endpoint in endpoints {
            let addr: SocketAddr = endpoint.parse().unwrap();
            let listener = lab
                .run_in("internet", || {
                    let socket = super::sockets::bound(addr).expect("bind reflector listener");
                    socket.listen(128).expect("listen");
                    socket.set_nonblocking(true).unwrap();
                    TcpListener::from(socket)
                })
                .unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || serve(listener, stop)));
        }
        Self { stop, threads }
    }
}

fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                std::thread::spawn(move || {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_nodelay(true).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    if writeln!(stream, "{peer}").is_err() {
                        return;
                    }
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break,
        }
    }
}

impl Drop for EndpointReflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from `local` to `remote` with a timeout (IPv4).
pub fn connect_from(
    local: SocketAddrV4,
    remote: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    connect_any(SocketAddr::V4(local), SocketAddr::V4(remote), timeout)
}

/// Connects from `local` (a reuse-port socket, as trials bind) to `remote`
/// with a timeout, in either family.
pub fn connect_any(
    local: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = super::sockets::bound(local)?;
    socket.connect_timeout(&remote.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects from `local` to an echo server and returns the public endpoint it saw.
pub fn observe(local: SocketAddrV4, server: SocketAddrV4) -> SocketAddrV4 {
    match observe_any(SocketAddr::V4(local), SocketAddr::V4(server)) {
        SocketAddr::V4(seen) => seen,
        other => panic!("an IPv4 connection seen as {other}"),
    }
}

/// Connects from `local` to an endpoint reflector (an echo server, or the
/// one line of [`EndpointReflector`]) and returns the source endpoint it
/// saw, in either family.
pub fn observe_any(local: SocketAddr, server: SocketAddr) -> SocketAddr {
    let stream = connect_any(local, server, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {local} -> {server}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("reflector line {line:?}"))
}

/// A listener on `local` that shares the port with outgoing sockets.
pub fn listen_on(local: SocketAddrV4) -> TcpListener {
    let socket = super::sockets::bound(SocketAddr::V4(local)).unwrap();
    socket.listen(16).unwrap();
    socket.into()
}

/// The `punchscope` binary under test, to run inside namespace `ns`.
pub fn punchscope_in(ns: &str) -> std::process::Command {
    netns::command_in(ns, env!("CARGO_BIN_EXE_punchscope")).unwrap()
}

/// The coordinator's endpoint in the internet namespace, for lab tests that run `serve rendezvous`.
pub const COORDINATOR: &str = "198.51.100.10:7000";

/// A plan file in a temporary directory of its own, removed when dropped.
pub struct TempPlan {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TempPlan {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

/// A probe plan named `lab_tag` with `body`, in a temporary directory that
/// goes with the returned value.
pub fn plan(lab_tag: &str, body: &str) -> TempPlan {
    let dir = tempfile::tempdir().unwrap();
    TempPlan {
        path: plan_in(dir.path(), lab_tag, body),
        _dir: dir,
    }
}

/// A probe plan named `lab_tag` with `body`, written to `dir` (a test's own
/// temporary directory, removed however the test ends).
pub fn plan_in(dir: &std::path::Path, lab_tag: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{}-{lab_tag}-plan.toml", std::process::id()));
    std::fs::write(&path, format!("version = 1\nname = \"{lab_tag}\"\n{body}")).unwrap();
    path
}

/// The echo servers the probes classify against, on both lab server IPs and two ports.
pub fn start_echo(lab: &Lab) -> punchscope::lab::services::EchoService {
    let endpoints: Vec<SocketAddr> = [
        "198.51.100.10:3478",
        "198.51.100.10:3479",
        "198.51.100.11:3478",
        "198.51.100.11:3479",
    ]
    .iter()
    .map(|e| e.parse().unwrap())
    .collect();
    punchscope::lab::services::EchoService::start(lab, &endpoints).unwrap()
}

/// The echo servers on both lab server IPs and two ports, over IPv4 and
/// IPv6: for dual-stack hosts (behind kernel routers with `ipv6`).
pub fn start_echo_dual_stack(lab: &Lab) -> punchscope::lab::services::EchoService {
    let endpoints: Vec<SocketAddr> = [
        "198.51.100.10:3478",
        "198.51.100.10:3479",
        "198.51.100.11:3478",
        "198.51.100.11:3479",
        "[2001:db8:5100::10]:3478",
        "[2001:db8:5100::10]:3479",
        "[2001:db8:5100::11]:3478",
        "[2001:db8:5100::11]:3479",
    ]
    .iter()
    .map(|e| e.parse().unwrap())
    .collect();
    punchscope::lab::services::EchoService::start(lab, &endpoints).unwrap()
}

/// The real `classify --json` in `host` against the echo `servers`
/// (`HOST:PORT`, each passed as `--server`), its output piped.
pub fn classify_in(lab: &Lab, host: &str, servers: &[&str]) -> std::process::Child {
    let mut command = punchscope_in(&lab.host_netns(host).unwrap());
    command.args(["classify", "--json"]);
    for server in servers {
        command.args(["--server", server]);
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A volunteer's `probe` run in the lab (JSON result on stdout), spooling into `spool`.
pub fn probe_command_with_spool(
    lab: &Lab,
    host: &str,
    spool: &std::path::Path,
) -> std::process::Command {
    probe_command_with_echo(
        lab,
        host,
        spool,
        &["198.51.100.10:3478", "198.51.100.11:3478"],
        20,
    )
}

/// As [`probe_command_with_spool`], classifying against `echo` (each passed
/// as `--echo`; IPv6 literals beside IPv4 ones make a dual-stack run) and
/// waiting at most `max_wait_secs` for a peer.
pub fn probe_command_with_echo(
    lab: &Lab,
    host: &str,
    spool: &std::path::Path,
    echo: &[&str],
    max_wait_secs: u64,
) -> std::process::Command {
    let mut command = punchscope_in(&lab.host_netns(host).unwrap());
    command.args(["probe", "--server", COORDINATOR]);
    for endpoint in echo {
        command.args(["--echo", endpoint]);
    }
    command
        .args(["--yes", "--json", "--quiet", "--max-wait-secs"])
        .arg(max_wait_secs.to_string())
        .arg("--spool")
        .arg(spool);
    command
}

/// `serve rendezvous` with `plan` in the internet namespace, once it accepts connections.
pub fn start_coordinator(lab: &Lab, plan: &std::path::Path) -> super::process::ChildGuard {
    start_coordinator_with(lab, plan, &[])
}

/// The coordinator's IPv6 endpoint when it listens on both families
/// ([`start_coordinator_dual_stack`]): the first server's IPv6 address.
pub const COORDINATOR_V6: &str = "[2001:db8:5100::10]:7000";

/// `serve rendezvous` listening on `[::]:7000` (both families: the first
/// server's [`COORDINATOR`] and [`COORDINATOR_V6`]), once both accept.
pub fn start_coordinator_dual_stack(
    lab: &Lab,
    plan: &std::path::Path,
) -> super::process::ChildGuard {
    start_coordinator_listening(lab, plan, "[::]:7000", &[COORDINATOR, COORDINATOR_V6], &[])
}

/// As [`start_coordinator`], with more arguments (`--any-reference`, ...).
pub fn start_coordinator_with(
    lab: &Lab,
    plan: &std::path::Path,
    extra: &[&str],
) -> super::process::ChildGuard {
    start_coordinator_listening(lab, plan, COORDINATOR, &[COORDINATOR], extra)
}

/// `serve rendezvous --listen listen` with `plan` (and `extra`) in the
/// internet namespace, once each of `answering` accepts connections.
fn start_coordinator_listening(
    lab: &Lab,
    plan: &std::path::Path,
    listen: &str,
    answering: &[&str],
    extra: &[&str],
) -> super::process::ChildGuard {
    let child = punchscope_in(&lab.internet_netns())
        .args(["serve", "rendezvous", "--listen", listen, "--plan"])
        .arg(plan)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = super::process::ChildGuard(Some(child));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let accepts = || answering.iter().all(|a| TcpStream::connect(a).is_ok());
    while !lab.run_in("internet", accepts).unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "coordinator did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// A scenario of two NATs `a` and `b` (their TOML keys given), host alice behind a, bob behind b.
pub fn two_nats(a: &str, b: &str) -> String {
    format!(
        "[[nat]]\nname = \"a\"\n{a}\n[[nat]]\nname = \"b\"\n{b}\n\
         [[host]]\nname = \"alice\"\nnat = \"a\"\n[[host]]\nname = \"bob\"\nnat = \"b\"\n"
    )
}

/// Runs `probe` in alice and bob at once (echo servers started here, the
/// coordinator already running) and returns both results, alice's first,
/// each checked to be one finished pairing behind a NAT.
pub fn probe_alice_and_bob(
    lab: &Lab,
    within: Duration,
) -> Vec<punchscope::analysis::result::RunResult> {
    let _echo = start_echo(lab);
    let results = probe_alice_and_bob_with(within, |host, spool| {
        probe_command_with_spool(lab, host, spool)
    });
    for result in &results {
        assert!(!result.classification.verdict.no_nat, "behind a lab NAT");
    }
    results
}

/// As [`probe_alice_and_bob`], each probe's command from `command` (host,
/// spool); the caller starts the echo servers (and checks the NATs: over
/// IPv6 there may be none).
pub fn probe_alice_and_bob_with(
    within: Duration,
    command: impl Fn(&str, &std::path::Path) -> std::process::Command,
) -> Vec<punchscope::analysis::result::RunResult> {
    use punchscope::analysis::result::{PairingEnded, RunResult};
    let spools = tempfile::tempdir().unwrap();
    let spawn = |host: &str| {
        command(host, &spools.path().join(host))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both pipes are drained while the probes run: a result larger than a
    // pipe's buffer would otherwise block its probe forever.
    let drain = |child: &mut std::process::Child| {
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        (
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = out.read_to_end(&mut v);
                v
            }),
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = err.read_to_end(&mut v);
                v
            }),
        )
    };
    let mut children = [spawn("alice"), spawn("bob")];
    let readers: Vec<_> = children.iter_mut().map(drain).collect();
    let deadline = std::time::Instant::now() + within;
    let mut outputs = Vec::new();
    for (child, (out, err)) in children.into_iter().zip(readers) {
        let mut guard = super::process::ChildGuard(Some(child));
        let status = loop {
            if let Some(status) = guard.0.as_mut().unwrap().try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "probe did not finish within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        guard.0.take();
        let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
        assert!(
            status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&stderr)
        );
        let result = RunResult::from_json(std::str::from_utf8(&stdout).unwrap()).unwrap();
        assert_eq!(result.pairings.len(), 1);
        assert_eq!(result.pairings[0].ended, PairingEnded::Done);
        outputs.push(result);
    }
    outputs
}
