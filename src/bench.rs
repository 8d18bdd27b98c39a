//! `punchscope bench rendezvous`: idle volunteers a coordinator holds, and
//! pairings it coordinates per second, on loopback. The figures are returned
//! as [`RendezvousBench`]; the command prints them.
//!
//! The coordinator runs as a child process (`serve rendezvous`), so its
//! memory (VmRSS from /proc/PID/status) is measured alone and each process
//! has its own open-file limit. Clients spread their source addresses over
//! 127.0.0.0/8 to stay within the per-IP limits. Every wait is bounded and
//! the child is killed on every exit path.

use std::io::{BufRead, BufReader as StdBufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use punchscope_analysis::trial::TrialOutcome;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};

use crate::net::socket::raise_fd_limit;
use crate::proto::rendezvous::{self as proto, ClientMessage, Hello, ServerMessage};
use crate::rendezvous::{register_port, Client, RendezvousError, Step, TrialReport};

/// What the rendezvous benchmark does.
#[derive(Debug, Clone)]
pub struct RendezvousBenchOptions {
    /// Idle volunteers to hold at once.
    pub idle: u32,
    /// Pairings to run with fake trials.
    pub pairs: u32,
    /// Trials per pairing.
    pub trials: u32,
    /// Pairings in flight at once.
    pub concurrency: usize,
    /// The `punchscope` binary to run the coordinator with (normally this one).
    pub exe: PathBuf,
}

/// The idle phase: volunteers connected, welcomed and held.
#[derive(Debug, Clone, Serialize)]
pub struct IdleFigures {
    pub asked: u32,
    pub held: u32,
    pub failed: u32,
    pub connect_seconds: f64,
    /// Heartbeats (`waiting` lines) received in one heartbeat interval plus a second.
    pub heartbeats: u64,
    pub interval_seconds: u64,
    pub rss_start_kib: u64,
    pub rss_kib: u64,
}

/// The pairing phase: pairings with fake trials, as fast as the coordinator goes.
#[derive(Debug, Clone, Serialize)]
pub struct PairFigures {
    pub asked: u32,
    pub done: u32,
    pub failed: u32,
    pub trials_per_pairing: u32,
    pub concurrency: usize,
    pub seconds: f64,
    pub pairings_per_second: f64,
    pub trials_per_second: f64,
    pub rss_kib: u64,
}

/// Everything the rendezvous benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct RendezvousBench {
    pub coordinator: SocketAddr,
    pub idle: IdleFigures,
    pub pairs: PairFigures,
}

/// Why the benchmark could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {cause}")]
    Io {
        context: &'static str,
        cause: std::io::Error,
    },
    #[error("the coordinator did not start: {0}")]
    CoordinatorStart(String),
    #[error("--idle {idle} needs more open files than the limit {limit}")]
    TooFewFiles { idle: u32, limit: u64 },
    #[error("{0}")]
    Stalled(String),
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
    move |cause| BenchError::Io { context, cause }
}

/// One simulated client failed; counted, not fatal.
#[derive(Debug, thiserror::Error)]
enum ClientFailure {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    #[error("timed out")]
    Timeout(#[from] tokio::time::error::Elapsed),
    #[error("{0}")]
    Protocol(&'static str),
}

const PER_IP: u32 = 32;
const WAIT: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Kills the coordinator child however the bench ends.
struct Coordinator {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    fn start(exe: &Path, plan: &Path) -> Result<Coordinator, BenchError> {
        let mut child = Command::new(exe)
            .args(["serve", "rendezvous", "--listen", "127.0.0.1:0"])
            .arg("--plan")
            .arg(plan)
            .args(["--max-connections", "30000", "--max-connections-per-ip"])
            .arg((PER_IP * 2).to_string())
            .arg("--max-connections-per-site")
            .arg((PER_IP * 2).to_string())
            .args(["--max-waiting", "30000", "--max-waiting-per-site"])
            .arg((PER_IP * 2).to_string())
            .args(["--trials-per-ip-burst", "100000", "--max-wait-secs", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("cannot start the coordinator"))?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = StdBufReader::new(stderr).lines();
        let first = lines
            .next()
            .transpose()
            .map_err(io("reading the coordinator's first line"))?
            .unwrap_or_default();
        let guard = |addr| Coordinator { child, addr };
        let Some(addr) = first
            .strip_prefix("rendezvous: listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
        else {
            drop(guard("0.0.0.0:0".parse().expect("valid")));
            return Err(BenchError::CoordinatorStart(first));
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(guard(addr))
    }

    /// Resident memory of the coordinator, in KiB.
    fn rss_kib(&self) -> Result<u64, BenchError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(io("reading the coordinator's /proc/PID/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| BenchError::Stalled("no VmRSS in /proc/PID/status".into()))
    }
}

/// The `n`th client address of a group: 127.G.x.y, PER_IP clients per address.
fn source(group: u8, n: u32) -> IpAddr {
    let host = n / PER_IP + 1;
    IpAddr::V4(Ipv4Addr::new(
        127,
        group,
        (host / 250) as u8,
        (host % 250 + 1) as u8,
    ))
}

/// Runs the coordinator as a child process, holds `idle` volunteers, then
/// runs `pairs` pairings with fake trials; the child is ended on every path.
pub fn rendezvous(args: &RendezvousBenchOptions) -> Result<RendezvousBench, BenchError> {
    let fds = raise_fd_limit().map_err(io("cannot raise the open-file limit"))?;
    if u64::from(args.idle) + 100 > fds {
        return Err(BenchError::TooFewFiles {
            idle: args.idle,
            limit: fds,
        });
    }
    let plan_path =
        std::env::temp_dir().join(format!("punchscope-bench-{}.toml", std::process::id()));
    std::fs::write(
        &plan_path,
        format!(
            "version = 1\nname = \"bench\"\ntrials = {}\nstrategies = [\"simultaneous\", \"low_ttl\"]\nrtt_samples = 1\n",
            args.trials
        ),
    )
    .map_err(io("writing the bench plan"))?;
    let coordinator = Coordinator::start(&args.exe, &plan_path);
    let _ = std::fs::remove_file(&plan_path);
    let coordinator = coordinator?;
    let runtime = tokio::runtime::Runtime::new().map_err(io("cannot start the async runtime"))?;
    let base_rss = coordinator.rss_kib()?;
    let (idle, pairs) = runtime.block_on(async {
        let idle = idle_phase(&coordinator, args, base_rss).await?;
        let pairs = pair_phase(&coordinator, args).await?;
        Ok::<_, BenchError>((idle, pairs))
    })?;
    Ok(RendezvousBench {
        coordinator: coordinator.addr,
        idle,
        pairs,
    })
}

async fn idle_phase(
    coordinator: &Coordinator,
    args: &RendezvousBenchOptions,
    base_rss: u64,
) -> Result<IdleFigures, BenchError> {
    let server = coordinator.addr;
    let (stop_tx, stop) = watch::channel(false);
    let heartbeats = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let settled = Arc::new(AtomicU64::new(0));
    let mut holders = tokio::task::JoinSet::new();
    for i in 0..args.idle {
        let (gate, mut stop, heartbeats) = (gate.clone(), stop.clone(), heartbeats.clone());
        let settled = settled.clone();
        holders.spawn(async move {
            let permit = gate.acquire_owned().await.expect("open");
            let connect = async {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source(1, i), 0))?;
                let stream = tokio::time::timeout(WAIT, socket.connect(server)).await??;
                let (read, mut write) = stream.into_split();
                let hello = Hello {
                    pair_code: Some(format!("idle-{i}")),
                    ..Hello::volunteer(Duration::from_secs(600))
                };
                write
                    .write_all(&proto::encode_client(&ClientMessage::Hello(hello)))
                    .await?;
                let mut lines = BufReader::new(read).lines();
                let welcome = tokio::time::timeout(WAIT, lines.next_line()).await??;
                if !welcome.is_some_and(|l| l.contains("\"welcome\"")) {
                    return Err(ClientFailure::Protocol("no welcome"));
                }
                Ok::<_, ClientFailure>((lines, write))
            };
            let connected = connect.await;
            settled.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            // The write half stays open: dropping it would send FIN.
            let (mut lines, _write) = connected?;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    line = tokio::time::timeout(WAIT, lines.next_line()) => {
                        match line?? {
                            Some(l) if matches!(proto::decode_server(&l), Ok(ServerMessage::Waiting { .. })) => {
                                heartbeats.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => return Err(ClientFailure::Protocol("idle volunteer lost")),
                        }
                    }
                }
            }
        });
    }
    // Wait until all are welcomed (gate fully free again and nothing failed early).
    let deadline = Instant::now() + Duration::from_secs(120);
    while settled.load(Ordering::Relaxed) < u64::from(args.idle) {
        if Instant::now() > deadline {
            return Err(BenchError::Stalled(
                "idle volunteers did not connect within 120 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_time = started.elapsed();
    let before = heartbeats.load(Ordering::Relaxed);
    tokio::time::sleep(HEARTBEAT + Duration::from_secs(1)).await;
    let beats = heartbeats.load(Ordering::Relaxed) - before;
    let rss = coordinator.rss_kib()?;
    let _ = stop_tx.send(true);
    let mut failed = 0;
    while let Some(joined) = holders.join_next().await {
        if !matches!(joined, Ok(Ok(()))) {
            failed += 1;
        }
    }
    Ok(IdleFigures {
        asked: args.idle,
        held: args.idle - failed,
        failed,
        connect_seconds: connect_time.as_secs_f64(),
        heartbeats: beats,
        interval_seconds: HEARTBEAT.as_secs() + 1,
        rss_start_kib: base_rss,
        rss_kib: rss,
    })
}

async fn pair_phase(
    coordinator: &Coordinator,
    args: &RendezvousBenchOptions,
) -> Result<PairFigures, BenchError> {
    let server = coordinator.addr;
    // Let the coordinator forget the idle volunteers first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut pairs = tokio::task::JoinSet::new();
    for i in 0..args.pairs {
        let gate = gate.clone();
        pairs.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("open");
            let code = format!("pair-{i}");
            let (a, b) = tokio::join!(
                fake_side(server, source(2, i), code.clone()),
                fake_side(server, source(3, i), code)
            );
            Ok::<_, ClientFailure>(a? + b?)
        });
    }
    let mut trials = 0u64;
    let mut failed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while let Some(joined) = tokio::time::timeout_at(deadline, pairs.join_next())
        .await
        .map_err(|_| BenchError::Stalled("pairings did not finish within 600 s".into()))?
    {
        match joined {
            Ok(Ok(n)) => trials += u64::from(n),
            _ => failed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = args.pairs - failed;
    Ok(PairFigures {
        asked: args.pairs,
        done,
        failed,
        trials_per_pairing: args.trials,
        concurrency: args.concurrency,
        seconds: elapsed,
        pairings_per_second: f64::from(done) / elapsed,
        trials_per_second: trials as f64 / 2.0 / elapsed,
        rss_kib: coordinator.rss_kib()?,
    })
}

/// One side of a pairing with fake trials: registers each port, primes and
/// reports at once. Returns the trials it reported.
async fn fake_side(server: SocketAddr, ip: IpAddr, code: String) -> Result<u32, ClientFailure> {
    let hello = Hello::volunteer(Duration::from_secs(60)).with_pair_code(code);
    let mut client = Client::connect_from(Some(ip), server, hello, WAIT).await?;
    client
        .wait_for_pairing(|_| {}, Duration::from_secs(60))
        .await?;
    let mut reported = 0;
    for _ in 0..10_000 {
        match client.next().await? {
            Step::Trial { token, .. } => {
                let socket = crate::net::socket::bound(SocketAddr::new(ip, 0))?;
                register_port(socket, server, &token, None, WAIT).await?;
            }
            Step::Prime { trial, .. } => client.primed(trial).await?,
            Step::Go { trial, .. } => {
                let report = TrialReport {
                    outcome: TrialOutcome::Connected,
                    go_to_established_ms: Some(0.0),
                    attempts: 1,
                };
                client.report(trial, &report).await?;
                reported += 1;
            }
            Step::PeerResult { .. } => {}
            Step::PeerGone { .. } => return Err(ClientFailure::Protocol("peer gone")),
            Step::Done { .. } => return Ok(reported),
        }
    }
    Err(ClientFailure::Protocol("too many steps"))
}
