//! The control connection: hello, waiting for a peer, and the trial steps the coordinator sends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::lines::read_message;
use super::RendezvousError;
use crate::net::line::{LineConnection, LineConnectionError};
use crate::proto::rendezvous::{
    self as proto, ClientMessage, ErrorCode, Hello, Mode, ServerMessage, TrialResult, MAX_LINE,
};
use punchscope_analysis::classify::Verdict;
use punchscope_analysis::handshake::Role;
use punchscope_analysis::plan::{AttemptTiming, Plan};
use punchscope_analysis::portmap::MappedSide;
use punchscope_analysis::privacy;
use punchscope_analysis::trial::{Family, Strategy, TrialOutcome, TrialRecord};

/// Drops from `hello` the optional field added within version 1 that an
/// older coordinator's `bad_request` names as unknown (serde names the
/// first unknown field it meets), if `hello` still has it: then the caller
/// says hello again without it. `false`: nothing left to drop, the refusal stands.
fn drop_refused_field(hello: &mut Hello, message: &str) -> bool {
    if hello.verdict.is_some() && message.contains("unknown field `verdict`") {
        hello.verdict = None;
        return true;
    }
    if hello.families.is_some() && message.contains("unknown field `families`") {
        hello.families = None;
        return true;
    }
    false
}

impl Hello {
    /// A volunteer's hello: this build's version and OS, and the volunteer's
    /// consent to exchange public endpoints with a peer (ask for it first).
    pub fn volunteer(max_wait: Duration) -> Hello {
        Hello {
            client_version: concat!("punchscope ", env!("CARGO_PKG_VERSION")).to_string(),
            os: std::env::consts::OS.to_string(),
            mode: Mode::Volunteer,
            pair_code: None,
            max_wait_ms: Some(proto::millis(max_wait)),
            consent: true,
            verdict: None,
            families: None,
        }
    }

    /// A reference peer's hello (the coordinator accepts it only from its operator's hosts).
    pub fn reference() -> Hello {
        Hello {
            mode: Mode::Reference,
            max_wait_ms: None,
            ..Hello::volunteer(Duration::ZERO)
        }
    }

    /// Pairs only with a client giving the same code.
    pub fn with_pair_code(mut self, code: impl Into<String>) -> Hello {
        self.pair_code = Some(code.into());
        self
    }

    /// Tells the coordinator which IP families we can run trials in.
    pub fn with_families(mut self, families: Vec<Family>) -> Hello {
        self.families = Some(families);
        self
    }

    /// Tells the coordinator our NAT verdict, for our peer. Any address left
    /// in its free text is cut to its prefix first, as in a result.
    pub fn with_verdict(mut self, verdict: &Verdict) -> Hello {
        let mut value = serde_json::to_value(verdict).expect("a verdict serializes");
        privacy::redact_json(&mut value);
        // Only strings changed, none of them typed fields, so it still reads.
        self.verdict = Some(Box::new(
            serde_json::from_value(value).unwrap_or_else(|_| verdict.clone()),
        ));
        self
    }
}

/// What `wait_for_pairing` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Pairing {
    pub role: Role,
    /// Validated.
    pub plan: Plan,
    pub peer_mode: Mode,
    /// The peer's NAT verdict, when it sent one (older clients do not).
    pub peer_verdict: Option<Verdict>,
}

/// One step of a pairing, in the order the coordinator sends them.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Bind a fresh local port and [`super::register_port`] it with `token`.
    Trial {
        trial: u32,
        token: String,
        strategy: Strategy,
        /// Bind the port in this family and register it at the
        /// coordinator's address of this family (from older coordinators,
        /// which send none: the control connection's family).
        family: Family,
    },
    /// `low_ttl` only: send the opening SYN to `peer` with this TTL, then [`Client::primed`].
    Prime {
        trial: u32,
        peer: SocketAddr,
        ttl: u8,
    },
    /// Wait `delay` (which includes `injected_skew`), then connect to `peer`,
    /// prove the connection with `nonce`, and [`Client::report`].
    Go {
        trial: u32,
        peer: SocketAddr,
        delay: Duration,
        nonce: String,
        strategy: Strategy,
        injected_skew: Duration,
        /// The attempt timing the coordinator derived from the pair's RTT;
        /// `None`: the plan's fixed values.
        timing: Option<AttemptTiming>,
        /// `mapped` trials: listen behind our mapping, connect to the peer's,
        /// or neither (see [`ServerMessage::Go`]).
        mapped: Option<MappedSide>,
    },
    /// The peer's outcome of a trial (after both reported).
    PeerResult { trial: u32, outcome: TrialOutcome },
    /// The peer left; the pairing is over (the coordinator closes).
    PeerGone { trial: Option<u32> },
    /// Every trial ran; the pairing is over (the coordinator closes).
    Done { trials: u32 },
}

/// What a side reports after a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialReport {
    pub outcome: TrialOutcome,
    pub go_to_established_ms: Option<f64>,
    pub attempts: u32,
}

impl From<&TrialRecord> for TrialReport {
    fn from(record: &TrialRecord) -> Self {
        TrialReport {
            outcome: record.outcome,
            go_to_established_ms: record.go_to_established_ms,
            attempts: u32::try_from(record.attempts.len()).unwrap_or(u32::MAX),
        }
    }
}

type Inbox = mpsc::Receiver<Result<ServerMessage, RendezvousError>>;

/// A control connection to the coordinator. Dropping it closes the connection.
pub struct Client {
    server: SocketAddr,
    session: String,
    read_timeout: Duration,
    writer: Arc<Mutex<LineConnection<OwnedWriteHalf>>>,
    inbox: Inbox,
    reader: JoinHandle<()>,
    plan: Option<Plan>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects and says hello; returns once welcomed. `read_timeout` bounds
    /// the connect and every wait for a coordinator line (waits during a
    /// pairing also get the plan's trial time, see [`Client::next`]).
    pub async fn connect(
        server: SocketAddr,
        hello: Hello,
        read_timeout: Duration,
    ) -> Result<Client, RendezvousError> {
        Self::connect_from(None, server, hello, read_timeout).await
    }

    /// As [`Client::connect`], from a chosen local IP (tests give each
    /// client its own loopback address, as different public IPs).
    ///
    /// A coordinator older than `hello.verdict` or `hello.families` refuses
    /// the field (`bad_request` naming it, as it refuses every unknown
    /// client field); then this says hello once more without it, so a newer
    /// client still runs with an older coordinator (its peer hears no
    /// verdict; its trials run in the control connection's family, as that
    /// coordinator runs them all).
    pub async fn connect_from(
        local_ip: Option<IpAddr>,
        server: SocketAddr,
        hello: Hello,
        read_timeout: Duration,
    ) -> Result<Client, RendezvousError> {
        let mut hello = hello;
        // Bounded: each retry drops one more of the added fields.
        loop {
            match Self::connect_once(local_ip, server, hello.clone(), read_timeout).await {
                Err(RendezvousError::Server {
                    code: ErrorCode::BadRequest,
                    message,
                    ..
                }) if drop_refused_field(&mut hello, &message) => continue,
                other => return other,
            }
        }
    }

    async fn connect_once(
        local_ip: Option<IpAddr>,
        server: SocketAddr,
        hello: Hello,
        read_timeout: Duration,
    ) -> Result<Client, RendezvousError> {
        let connect = async {
            let socket = match server {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(ip) = local_ip {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(server).await
        };
        let stream = match tokio::time::timeout(read_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(cause)) => return Err(RendezvousError::Connect { server, cause }),
            Err(_) => return Err(RendezvousError::Timeout(read_timeout, "connecting")),
        };
        let _ = stream.set_nodelay(true);
        Self::start(stream, server, hello, read_timeout).await
    }

    async fn start(
        stream: TcpStream,
        server: SocketAddr,
        hello: Hello,
        read_timeout: Duration,
    ) -> Result<Client, RendezvousError> {
        let (read, write) = LineConnection::new(stream, MAX_LINE).into_split();
        let writer = Arc::new(Mutex::new(write));
        let (tx, inbox) = mpsc::channel(16);
        let reader = tokio::spawn(read_loop(read, writer.clone(), tx));
        let mut client = Client {
            server,
            session: String::new(),
            read_timeout,
            writer,
            inbox,
            reader,
            plan: None,
        };
        client.send(&ClientMessage::Hello(hello)).await?;
        match client.recv(read_timeout, "waiting for welcome").await? {
            ServerMessage::Welcome { session } => client.session = session,
            other => return Err(unexpected(&other)),
        }
        Ok(client)
    }

    /// The coordinator's address: register ports with it.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The session id the coordinator gave this connection (for logs).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Waits until the coordinator pairs us, calling `progress` with the
    /// time waited at each heartbeat. Gives up (with `bye`) after `max_wait`
    /// plus the read timeout if the coordinator has not said `no_peer` by then.
    pub async fn wait_for_pairing(
        &mut self,
        mut progress: impl FnMut(Duration),
        max_wait: Duration,
    ) -> Result<Pairing, RendezvousError> {
        let started = Instant::now();
        let deadline = started + max_wait + self.read_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match self.recv(left, "waiting for a peer").await {
                Err(RendezvousError::Timeout(..)) => {
                    let _ = self.bye().await;
                    return Err(RendezvousError::NoPeer {
                        waited: started.elapsed(),
                    });
                }
                other => other?,
            };
            match msg {
                ServerMessage::Waiting { waited_ms } => progress(Duration::from_millis(waited_ms)),
                ServerMessage::NoPeer { waited_ms, .. } => {
                    return Err(RendezvousError::NoPeer {
                        waited: Duration::from_millis(waited_ms),
                    })
                }
                ServerMessage::Paired { role, plan, peer } => {
                    plan.validate()?;
                    self.plan = Some(plan.clone());
                    return Ok(Pairing {
                        role,
                        plan,
                        peer_mode: peer.mode,
                        peer_verdict: peer.verdict.map(|v| *v),
                    });
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// The next step of the pairing. Waits at most the read timeout plus the
    /// longest a trial may take under the plan (the peer may still be running it).
    pub async fn next(&mut self) -> Result<Step, RendezvousError> {
        let trial_time = self
            .plan
            .as_ref()
            .map_or(Duration::ZERO, proto::result_deadline);
        let msg = self
            .recv(self.read_timeout + trial_time, "waiting for the next step")
            .await?;
        Ok(match msg {
            ServerMessage::Trial {
                trial,
                token,
                strategy,
                family,
            } => Step::Trial {
                trial,
                token,
                strategy,
                // An older coordinator runs every trial where it controls.
                family: family.unwrap_or_else(|| Family::of(self.server().ip())),
            },
            ServerMessage::Prime { trial, peer, ttl } => Step::Prime { trial, peer, ttl },
            ServerMessage::Go {
                trial,
                peer,
                delay_ms,
                nonce,
                strategy,
                injected_skew_ms,
                timing,
                mapped,
            } => Step::Go {
                trial,
                peer,
                delay: Duration::from_millis(delay_ms),
                nonce,
                strategy,
                injected_skew: Duration::from_millis(injected_skew_ms),
                timing,
                mapped,
            },
            ServerMessage::PeerResult { trial, outcome } => Step::PeerResult { trial, outcome },
            ServerMessage::PeerGone { trial } => Step::PeerGone { trial },
            ServerMessage::Done { trials } => Step::Done { trials },
            other => return Err(unexpected(&other)),
        })
    }

    /// Says the low-TTL opening SYN of `trial` was sent.
    pub async fn primed(&mut self, trial: u32) -> Result<(), RendezvousError> {
        self.send(&ClientMessage::Primed { trial }).await
    }

    /// Reports this side's outcome of `trial`.
    pub async fn report(
        &mut self,
        trial: u32,
        report: &TrialReport,
    ) -> Result<(), RendezvousError> {
        let result = TrialResult {
            trial,
            outcome: report.outcome,
            go_to_established_ms: report.go_to_established_ms,
            attempts: report.attempts,
        };
        self.send(&ClientMessage::Result(result)).await
    }

    /// Leaves politely; the coordinator closes (and tells a paired peer `peer_gone`).
    pub async fn bye(&mut self) -> Result<(), RendezvousError> {
        self.send(&ClientMessage::Bye).await
    }

    async fn send(&self, msg: &ClientMessage) -> Result<(), RendezvousError> {
        let line = proto::encode_client(msg);
        let mut writer = self.writer.lock().await;
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        match writer.write_line_before(&line, deadline).await {
            Ok(()) => Ok(()),
            Err(LineConnectionError::Timeout) => {
                Err(RendezvousError::Timeout(self.read_timeout, "sending"))
            }
            Err(LineConnectionError::Io(e)) => Err(RendezvousError::Io(e)),
            Err(LineConnectionError::Line(e)) => Err(RendezvousError::Protocol(e.to_string())),
        }
    }

    async fn recv(
        &mut self,
        timeout: Duration,
        doing: &'static str,
    ) -> Result<ServerMessage, RendezvousError> {
        match tokio::time::timeout(timeout, self.inbox.recv()).await {
            Err(_) => Err(RendezvousError::Timeout(timeout, doing)),
            Ok(None) => Err(RendezvousError::Closed),
            Ok(Some(result)) => result,
        }
    }
}

fn unexpected(msg: &ServerMessage) -> RendezvousError {
    RendezvousError::Protocol(format!("unexpected message {msg:?}"))
}

/// Answers pings at once and forwards everything else; ends after the first error or EOF.
async fn read_loop(
    mut reader: LineConnection<OwnedReadHalf>,
    writer: Arc<Mutex<LineConnection<OwnedWriteHalf>>>,
    inbox: mpsc::Sender<Result<ServerMessage, RendezvousError>>,
) {
    loop {
        match read_message(&mut reader).await {
            Ok(ServerMessage::Ping { id }) => {
                let line = proto::encode_client(&ClientMessage::Pong { id });
                let mut writer = writer.lock().await;
                if writer.write_line(&line).await.is_err() {
                    let _ = inbox.send(Err(RendezvousError::Closed)).await;
                    return;
                }
            }
            Ok(msg) => {
                if inbox.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = inbox.send(Err(e)).await;
                return;
            }
        }
    }
}
