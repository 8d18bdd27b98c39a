//! `punchscope bench rendezvous`: idle volunteers a coordinator holds, and pairings it coordinates per second, on loopback.
//!
//! The coordinator runs as a child process (`serve rendezvous`), so its
//! memory (VmRSS from /proc/PID/status) is measured alone and each process
//! has its own open-file limit. Clients spread their source addresses over
//! 127.0.0.0/8 to stay within the per-IP limits. Every wait is bounded and
//! the child is killed on every exit path.

use std::io::{BufRead, BufReader as StdBufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use punchscope::analysis::trial::TrialOutcome;
use punchscope::proto::rendezvous::{self as proto, ClientMessage, Hello, ServerMessage};
use punchscope::rendezvous::{register_port, Client, Step, TrialReport};
use punchscope::server::rendezvous::raise_fd_limit;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Idle volunteers held and pairings per second of a coordinator, on loopback.
    Rendezvous(RendezvousBenchArgs),
}

#[derive(Debug, Args)]
pub struct RendezvousBenchArgs {
    /// Idle volunteers to hold at once.
    #[arg(long, default_value_t = 10_000)]
    pub idle: u32,
    /// Pairings to run with fake trials.
    #[arg(long, default_value_t = 1000)]
    pub pairs: u32,
    /// Trials per pairing.
    #[arg(long, default_value_t = 3)]
    pub trials: u32,
    /// Pairings in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

const PER_IP: u32 = 32;
const WAIT: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(5);

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchCommand::Rendezvous(args) => rendezvous(args),
    }
}

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
    fn start(plan: &std::path::Path) -> anyhow::Result<Coordinator> {
        let exe = std::env::current_exe().context("cannot find our own executable")?;
        let mut child = Command::new(exe)
            .args(["serve", "rendezvous", "--listen", "127.0.0.1:0"])
            .arg("--plan")
            .arg(plan)
            .args(["--max-connections", "30000", "--max-connections-per-ip"])
            .arg((PER_IP * 2).to_string())
            .args(["--trials-per-ip-burst", "100000", "--max-wait-secs", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the coordinator")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = StdBufReader::new(stderr).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        let guard = |addr| Coordinator { child, addr };
        let Some(addr) = first
            .strip_prefix("rendezvous: listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
        else {
            drop(guard("0.0.0.0:0".parse().expect("valid")));
            bail!("the coordinator did not start: {first}");
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(guard(addr))
    }

    /// Resident memory of the coordinator, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
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

fn rendezvous(args: RendezvousBenchArgs) -> anyhow::Result<ExitCode> {
    let fds = raise_fd_limit().context("cannot raise the open-file limit")?;
    if u64::from(args.idle) + 100 > fds {
        bail!(
            "--idle {} needs more open files than the limit {fds}",
            args.idle
        );
    }
    let plan_path =
        std::env::temp_dir().join(format!("punchscope-bench-{}.toml", std::process::id()));
    std::fs::write(
        &plan_path,
        format!(
            "version = 1\nname = \"bench\"\ntrials = {}\nstrategies = [\"simultaneous\", \"low_ttl\"]\nrtt_samples = 1\n",
            args.trials
        ),
    )?;
    let coordinator = Coordinator::start(&plan_path);
    let _ = std::fs::remove_file(&plan_path);
    let coordinator = coordinator?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let base_rss = coordinator.rss_kib()?;
    println!(
        "coordinator at {} (RSS at start {} KiB)",
        coordinator.addr, base_rss
    );
    runtime.block_on(async {
        idle_phase(&coordinator, &args, base_rss).await?;
        pair_phase(&coordinator, &args).await
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn idle_phase(
    coordinator: &Coordinator,
    args: &RendezvousBenchArgs,
    base_rss: u64,
) -> anyhow::Result<()> {
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
                    anyhow::bail!("no welcome");
                }
                Ok((lines, write))
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
                            _ => anyhow::bail!("idle volunteer lost"),
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
            bail!("idle volunteers did not connect within 120 s");
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
    let held = args.idle - failed;
    println!(
        "idle: {held} of {} volunteers held ({failed} failed), connected and welcomed in {:.2} s ({:.0}/s)",
        args.idle,
        connect_time.as_secs_f64(),
        f64::from(args.idle) / connect_time.as_secs_f64()
    );
    println!(
        "idle: {beats} heartbeats in one {} s interval; coordinator RSS {rss} KiB ({:.1} KiB per held volunteer above the {base_rss} KiB at start)",
        HEARTBEAT.as_secs() + 1,
        (rss.saturating_sub(base_rss)) as f64 / f64::from(held.max(1))
    );
    Ok(())
}

async fn pair_phase(coordinator: &Coordinator, args: &RendezvousBenchArgs) -> anyhow::Result<()> {
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
            Ok::<_, anyhow::Error>(a? + b?)
        });
    }
    let mut trials = 0u64;
    let mut failed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while let Some(joined) = tokio::time::timeout_at(deadline, pairs.join_next())
        .await
        .context("pairings did not finish within 600 s")?
    {
        match joined {
            Ok(Ok(n)) => trials += u64::from(n),
            _ => failed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = args.pairs - failed;
    println!(
        "pairs: {done} of {} pairings ({failed} failed) of {} trials each, {} in flight: {:.2} s, {:.0} pairings/s, {:.0} trials/s; coordinator RSS {} KiB",
        args.pairs,
        args.trials,
        args.concurrency,
        elapsed,
        f64::from(done) / elapsed,
        trials as f64 / 2.0 / elapsed,
        coordinator.rss_kib()?
    );
    Ok(())
}

/// One side of a pairing with fake trials: registers each port, primes and
/// reports at once. Returns the trials it reported.
async fn fake_side(server: SocketAddr, ip: IpAddr, code: String) -> anyhow::Result<u32> {
    let hello = Hello::volunteer(Duration::from_secs(60)).with_pair_code(code);
    let mut client = Client::connect_from(Some(ip), server, hello, WAIT).await?;
    client
        .wait_for_pairing(|_| {}, Duration::from_secs(60))
        .await?;
    let mut reported = 0;
    for _ in 0..10_000 {
        match client.next().await? {
            Step::Trial { token, .. } => {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_reuse_port(true)?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
                register_port(socket, server, &token, WAIT).await?;
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
            Step::PeerGone { .. } => bail!("peer gone"),
            Step::Done { .. } => return Ok(reported),
        }
    }
    bail!("too many steps")
}
