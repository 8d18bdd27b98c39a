//! Lab test support: unique lab names, root check, a plain-text endpoint
//! reflector in the internet namespace, blocking std sockets bound the way
//! hole punching binds them, and the binary under test run in a namespace.

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

/// Connects from `local` to `remote` with a timeout.
pub fn connect_from(
    local: SocketAddrV4,
    remote: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = super::sockets::bound(SocketAddr::V4(local))?;
    socket.connect_timeout(&SocketAddr::V4(remote).into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects from `local` to an echo server and returns the public endpoint it saw.
pub fn observe(local: SocketAddrV4, server: SocketAddrV4) -> SocketAddrV4 {
    let stream = connect_from(local, server, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {local} -> {server}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("echo line {line:?}"))
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
