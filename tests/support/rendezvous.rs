//! Loopback harness of the rendezvous and probe tests: a coordinator on
//! 127.0.0.1 with short deadlines, raw clients on other loopback IPs, a
//! scripted coordinator and a listener that counts who reaches it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use punchscope::analysis::plan::Plan;
use punchscope::proto::rendezvous::coordinator::{CoordinatorConfig, ReferencePolicy};
use punchscope::proto::rendezvous::{self as proto, ClientMessage, Hello, Mode, ServerMessage};
use punchscope::server::rendezvous::{bind_listener, run, RendezvousConfig, RendezvousServerError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use super::server_task::ServerTask;
use super::sockets::{connect_from_async, loopback};
use super::WAIT;

/// A coordinator (`serve rendezvous`) running on the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    task: ServerTask<RendezvousServerError>,
}

impl TestServer {
    /// Signals shutdown and waits (bounded) for `run` to return `Ok`.
    pub async fn stop(self) {
        self.task.stop().await.expect("server ran");
    }
}

/// A plan of `trials` trials of `strategies` (a TOML array), one short attempt each.
pub fn plan(trials: u32, strategies: &str, skew: u32, samples: u32) -> Plan {
    Plan::from_toml(&format!(
        "version = 1\nname = \"test\"\ntrials = {trials}\nstrategies = {strategies}\ninjected_skew_ms = {skew}\nrtt_samples = {samples}\nattempt_timeout_ms = 500\nmax_attempts = 1\nhandshake_step_ms = 100\n"
    ))
    .unwrap()
}

/// Short deadlines so the tests run fast; references accepted from anywhere.
pub fn fast_config(plan: Plan) -> RendezvousConfig {
    RendezvousConfig {
        coordinator: CoordinatorConfig {
            plan,
            hello_timeout: Duration::from_millis(500),
            max_wait: Duration::from_secs(3),
            heartbeat: Duration::from_millis(100),
            ping_timeout: Duration::from_secs(1),
            register_timeout: Duration::from_secs(1),
            primed_timeout: Duration::from_secs(1),
            references: ReferencePolicy::Anyone,
            ..CoordinatorConfig::default()
        },
        shutdown_grace: Duration::from_secs(1),
        ..RendezvousConfig::default()
    }
}

/// A coordinator on 127.0.0.1:0.
pub async fn start(config: RendezvousConfig) -> TestServer {
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = ServerTask::spawn(|shutdown| run(listener, config, shutdown));
    TestServer { addr, task }
}

/// 127.0.0.`last`: a distinct "public IP" per client.
pub fn ip(last: u8) -> IpAddr {
    loopback(0, 0, last)
}

/// A volunteer's hello, with a pair code or without.
pub fn volunteer(code: Option<&str>) -> Hello {
    let hello = Hello::volunteer(Duration::from_secs(3));
    match code {
        Some(code) => hello.with_pair_code(code),
        None => hello,
    }
}

/// A reference peer's hello.
pub fn reference() -> Hello {
    Hello {
        mode: Mode::Reference,
        ..volunteer(None)
    }
}

/// A client speaking raw lines, for scripted and misbehaving peers.
pub struct Raw {
    pub local: SocketAddr,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    /// Connects to the coordinator at `server` from `from`, on an ephemeral port.
    pub async fn connect(from: IpAddr, server: SocketAddr) -> Raw {
        let stream = connect_from_async(from, server).await;
        let local = stream.local_addr().unwrap();
        let (read, writer) = stream.into_split();
        Raw {
            local,
            reader: BufReader::new(read),
            writer,
        }
    }

    pub async fn send(&mut self, msg: &ClientMessage) {
        self.send_raw(&proto::encode_client(msg)).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next message, or `None` at EOF (or a reset).
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("the coordinator answers within the wait");
        match n {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(proto::decode_server(line.trim_end()).unwrap()),
        }
    }

    /// The next message that is not a `waiting` heartbeat.
    pub async fn recv_skipping_heartbeats(&mut self) -> Option<ServerMessage> {
        for _ in 0..1000 {
            match self.recv().await {
                Some(ServerMessage::Waiting { .. }) => continue,
                other => return other,
            }
        }
        panic!("only heartbeats");
    }

    /// Asserts the coordinator sent an error with `code` and then closed.
    pub async fn expect_error_and_close(&mut self, code: proto::ErrorCode) {
        match self.recv_skipping_heartbeats().await {
            Some(ServerMessage::Error { code: got, .. }) => assert_eq!(got, code),
            other => panic!("expected error {code:?}, got {other:?}"),
        }
        assert_eq!(self.recv().await, None, "closed after the error");
    }
}

/// A scripted coordinator on 127.0.0.1: answers `hello` with `welcome`, then
/// sends its script line by line without waiting for the client, answers
/// every `register` with the endpoint it saw, and records what clients send
/// on control connections.
pub struct ScriptedCoordinator {
    pub addr: SocketAddr,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<ClientMessage>>>,
    task: JoinHandle<()>,
}

impl Drop for ScriptedCoordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedCoordinator {
    pub async fn start(script: Vec<ServerMessage>) -> ScriptedCoordinator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, from)) = listener.accept().await else {
                    return;
                };
                let (script, log) = (script.clone(), log.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut reader = BufReader::new(read);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    match proto::decode_client(line.trim_end()) {
                        Ok(ClientMessage::Register { .. }) => {
                            let msg = ServerMessage::Registered { observed: from };
                            let _ = write.write_all(&proto::encode_server(&msg)).await;
                        }
                        Ok(hello @ ClientMessage::Hello(_)) => {
                            log.lock().unwrap().push(hello);
                            let welcome = ServerMessage::Welcome {
                                session: "0123456789abcdef".into(),
                            };
                            let _ = write.write_all(&proto::encode_server(&welcome)).await;
                            for msg in &script {
                                let _ = write.write_all(&proto::encode_server(msg)).await;
                            }
                            loop {
                                line.clear();
                                match reader.read_line(&mut line).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {
                                        if let Ok(msg) = proto::decode_client(line.trim_end()) {
                                            log.lock().unwrap().push(msg);
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                });
            }
        });
        ScriptedCoordinator {
            addr,
            received,
            task,
        }
    }
}

/// A listener that counts the connections reaching it: the target a hostile
/// server would have a probe connect to.
pub struct CountingListener {
    pub addr: SocketAddr,
    pub count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for CountingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingListener {
    pub async fn start(ip: IpAddr) -> CountingListener {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        CountingListener { addr, count, task }
    }

    pub fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}
