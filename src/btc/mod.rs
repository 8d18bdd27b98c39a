//! Bitcoin P2P handshakes (v1 and BIP324 v2) over any AsyncRead + AsyncWrite.
//!
//! [`initiate`] and [`respond`] run one handshake over a byte stream the
//! caller already connected (a punched socket, a TCP connection to a node, an
//! in-memory pipe) and return a [`HandshakeRecord`]: a failed handshake is a
//! measurement, not an error. A handshake is: (v2 only) the BIP324 key
//! exchange; `version` both ways; `verack` both ways; one `ping` of ours
//! answered by a `pong` with its nonce. Every phase has its own deadline, and
//! no message larger than the configured limit is read. `docs/bitcoin.md`
//! lists exactly what goes on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use bip324::CipherSession;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::Magic;
use bitcoin::Network;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use punchscope_analysis::handshake::{
    BitcoinNetwork, FailureReason, HandshakeRecord, Phase, Role, Transport,
};

mod conn;
pub mod message;
pub mod v1;
mod v2;

use conn::Conn;
use message::Incoming;

/// Bitcoin Core's MAX_PROTOCOL_MESSAGE_LENGTH: the largest payload accepted.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4_000_000;

/// How long a successful handshake's close waits for the peer's FIN at most.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long, after the handshake, a peer's own ping is still answered
/// before we close: a node pings right after verack.
const PONG_WINDOW: Duration = Duration::from_millis(100);

/// Messages we read and skip within one phase before giving up, so that a
/// peer flooding tiny messages cannot keep a phase busy until its deadline.
const MAX_MESSAGES_PER_PHASE: usize = 1000;

/// How to run a handshake.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Selects the magic bytes (v1 framing, BIP324 key derivation).
    pub network: BitcoinNetwork,
    /// Deadline of each phase, counted from the phase's start.
    pub step_timeout: Duration,
    /// Largest message payload we read; larger announcements fail the handshake.
    pub max_message_size: usize,
    /// The peer's address, written in our `version`'s receiver field.
    pub peer_addr: Option<SocketAddr>,
    /// Our BIP324 garbage has a random length in 0..=this (at most 4095).
    pub v2_max_garbage: usize,
    /// BIP324 decoy packets we send before our version packet.
    pub v2_decoys: usize,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            network: BitcoinNetwork::Mainnet,
            step_timeout: Duration::from_secs(10),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            peer_addr: None,
            v2_max_garbage: 64,
            v2_decoys: 1,
        }
    }
}

/// Which transports a responder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V1Only,
    V2Only,
    /// Tells them apart by the first 16 bytes, as Bitcoin Core does.
    Both,
}

/// The tool itself failed (a bug or a broken crypto library), as opposed to
/// the handshake failing, which is recorded in the [`HandshakeRecord`].
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("BIP324 library error: {0}")]
    Bip324(String),
}

/// Why a phase stopped early, before it is known which phase it was.
#[derive(Debug)]
pub(crate) enum Stop {
    /// EOF, reset, broken pipe.
    Closed,
    /// Another I/O error.
    Io(String),
    Failed(FailureReason),
    Tool(HandshakeError),
}

/// The magic bytes of a network.
pub fn magic(network: BitcoinNetwork) -> Magic {
    Magic::from(bitcoin_network(network))
}

/// The `bitcoin` crate's name for a network.
pub fn bitcoin_network(network: BitcoinNetwork) -> Network {
    match network {
        BitcoinNetwork::Mainnet => Network::Bitcoin,
        BitcoinNetwork::Testnet4 => Network::Testnet4,
        BitcoinNetwork::Signet => Network::Signet,
        BitcoinNetwork::Regtest => Network::Regtest,
    }
}

/// Runs a handshake as the initiator over `stream`.
pub async fn initiate<S>(
    stream: S,
    transport: Transport,
    config: &HandshakeConfig,
) -> Result<HandshakeRecord, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut run = Run::new(stream, Role::Initiator, Some(transport), config);
    let outcome = run.initiator(transport).await;
    run.finish(outcome).await
}

/// Runs a handshake as the responder over `stream`.
pub async fn respond<S>(
    stream: S,
    accept: Accept,
    config: &HandshakeConfig,
) -> Result<HandshakeRecord, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let transport = match accept {
        Accept::V1Only => Some(Transport::V1),
        Accept::V2Only => Some(Transport::V2),
        Accept::Both => None,
    };
    let mut run = Run::new(stream, Role::Responder, transport, config);
    let outcome = run.responder(accept).await;
    run.finish(outcome).await
}

/// A transport after its setup: plain framing or an established BIP324 session.
enum Link {
    V1,
    V2(Box<CipherSession>),
}

struct Run<'c, S> {
    conn: Conn<S>,
    config: &'c HandshakeConfig,
    magic: Magic,
    link: Link,
    /// Pings are answered only after our `version`: a `pong` before it
    /// would be a message before `version`, which Core ignores.
    version_sent: bool,
    record: HandshakeRecord,
}

type Outcome = Result<(), (Phase, Stop)>;

impl<'c, S> Run<'c, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn new(
        stream: S,
        role: Role,
        transport: Option<Transport>,
        config: &'c HandshakeConfig,
    ) -> Self {
        Run {
            conn: Conn::new(stream),
            config,
            magic: magic(config.network),
            link: Link::V1,
            version_sent: false,
            record: HandshakeRecord::new(transport, role, config.network),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.step_timeout
    }

    async fn initiator(&mut self, transport: Transport) -> Outcome {
        if transport == Transport::V2 {
            self.v2_setup(bip324::Role::Initiator).await?;
        }
        self.version_exchange(true).await?;
        self.verack_and_ping().await
    }

    async fn responder(&mut self, accept: Accept) -> Outcome {
        let transport = match accept {
            Accept::V1Only => Transport::V1,
            Accept::V2Only => Transport::V2,
            Accept::Both => {
                let deadline = self.deadline();
                let detected = tokio::time::timeout_at(deadline, self.detect()).await;
                let transport = match detected {
                    Err(_) => Err(timeout(Phase::Detect)),
                    Ok(result) => result.map_err(|stop| (Phase::Detect, stop)),
                }?;
                self.record.transport = Some(transport);
                transport
            }
        };
        if transport == Transport::V2 {
            self.v2_setup(bip324::Role::Responder).await?;
        }
        self.version_exchange(false).await?;
        self.verack_and_ping().await
    }

    /// Reads until the first 16 bytes match a v1 `version` header or one
    /// byte does not, then puts them back for the chosen transport.
    async fn detect(&mut self) -> Result<Transport, Stop> {
        let prefix = v1::version_prefix(self.magic);
        let mut seen = Vec::with_capacity(prefix.len());
        let mut chunk = [0u8; 16];
        let transport = loop {
            let n = self.conn.read_some(&mut chunk[..16 - seen.len()]).await?;
            seen.extend_from_slice(&chunk[..n]);
            if seen[..] != prefix[..seen.len()] {
                break Transport::V2;
            }
            if seen.len() == prefix.len() {
                break Transport::V1;
            }
        };
        self.conn.unread(&seen);
        Ok(transport)
    }

    async fn v2_setup(&mut self, role: bip324::Role) -> Outcome {
        let phase = Phase::V2KeyExchange;
        let started = Instant::now();
        let ours = v2::Obfuscation::random(self.config.v2_max_garbage, self.config.v2_decoys);
        let magic = self.magic.to_bytes();
        let max = self.config.max_message_size;
        let exchange = v2::key_exchange(&mut self.conn, magic, role, &ours, max);
        let cipher = match tokio::time::timeout_at(started + self.config.step_timeout, exchange)
            .await
        {
            Err(_) => return Err(timeout(phase)),
            Ok(Ok(cipher)) => cipher,
            // Bitcoin Core retries with v1 when a v2 connection it opened is
            // closed before any byte came back: that is what v1-only peers do.
            Ok(Err(Stop::Closed)) if role == bip324::Role::Initiator && self.conn.received == 0 => {
                return Err((phase, Stop::Failed(FailureReason::V1OnlyPeer)))
            }
            Ok(Err(stop)) => return Err((phase, stop)),
        };
        self.record.session_id = Some(message::hex(cipher.id()));
        self.record.durations.v2_key_exchange_ms = Some(ms(started));
        self.link = Link::V2(Box::new(cipher));
        Ok(())
    }

    async fn version_exchange(&mut self, we_start: bool) -> Outcome {
        let phase = Phase::Version;
        let started = Instant::now();
        let deadline = self.deadline();
        let nonce: u64 = rand::random();
        let ours = NetworkMessage::Version(message::our_version(self.config.peer_addr, nonce));
        let work = async {
            if we_start {
                self.send(ours.clone()).await?;
            }
            let theirs = self
                .recv_until(|m| match m {
                    Incoming::Version(v) => Some(v),
                    _ => None,
                })
                .await?;
            if !we_start {
                self.send(ours).await?;
            }
            Ok(theirs)
        };
        let theirs = within(phase, deadline, work).await?;
        self.record.peer = Some(message::peer_version(&theirs));
        self.record.durations.version_ms = Some(ms(started));
        // What Bitcoin Core sends between version and verack, only to peers
        // whose version calls for it: wtxidrelay (BIP339) and sendaddrv2
        // (BIP155). Sent after their version is known, before our verack.
        if theirs.version >= message::WTXID_RELAY_VERSION {
            let deadline = self.deadline();
            let feature_messages = async {
                self.send(NetworkMessage::WtxidRelay).await?;
                self.send(NetworkMessage::SendAddrV2).await
            };
            within(Phase::Verack, deadline, feature_messages).await?;
        }
        Ok(())
    }

    async fn verack_and_ping(&mut self) -> Outcome {
        let started = Instant::now();
        let deadline = self.deadline();
        let work = async {
            self.send(NetworkMessage::Verack).await?;
            self.recv_until(|m| matches!(m, Incoming::Verack).then_some(()))
                .await
        };
        within(Phase::Verack, deadline, work).await?;
        self.record.durations.verack_ms = Some(ms(started));

        let started = Instant::now();
        let deadline = self.deadline();
        let nonce: u64 = rand::random();
        let work = async {
            self.send(NetworkMessage::Ping(nonce)).await?;
            self.recv_until(|m| matches!(m, Incoming::Pong(n) if n == nonce).then_some(()))
                .await
        };
        within(Phase::Ping, deadline, work).await?;
        self.record.durations.ping_ms = Some(ms(started));
        Ok(())
    }

    /// Reads messages until `wanted` picks one, answering pings on the way
    /// (a node pings right after the handshake) and skipping the rest.
    async fn recv_until<T>(
        &mut self,
        mut wanted: impl FnMut(Incoming) -> Option<T>,
    ) -> Result<T, Stop> {
        for _ in 0..MAX_MESSAGES_PER_PHASE {
            let incoming = self.recv().await?;
            if let Incoming::Ping(n) = incoming {
                if self.version_sent {
                    self.send(NetworkMessage::Pong(n)).await?;
                }
                continue;
            }
            if let Some(found) = wanted(incoming) {
                return Ok(found);
            }
        }
        Err(Stop::Failed(FailureReason::Garbage {
            detail: format!("{MAX_MESSAGES_PER_PHASE} messages without the one awaited"),
        }))
    }

    async fn send(&mut self, message: NetworkMessage) -> Result<(), Stop> {
        if matches!(message, NetworkMessage::Version(_)) {
            self.version_sent = true;
        }
        let bytes = match &mut self.link {
            Link::V1 => v1::encode_message(self.magic, message),
            Link::V2(cipher) => v2::encrypt(cipher, &message::v2_contents(&message)),
        };
        self.conn.write_all(&bytes).await
    }

    async fn recv(&mut self) -> Result<Incoming, Stop> {
        let max = self.config.max_message_size;
        match &mut self.link {
            Link::V1 => {
                let (command, payload) = v1::read_message(&mut self.conn, self.magic, max).await?;
                message::decode(&command, &payload).map_err(Stop::Failed)
            }
            Link::V2(cipher) => {
                let contents = v2::read_contents(&mut self.conn, cipher, max).await?;
                let (command, payload) =
                    message::split_v2_contents(&contents).map_err(Stop::Failed)?;
                message::decode(&command, payload).map_err(Stop::Failed)
            }
        }
    }

    async fn finish(mut self, outcome: Outcome) -> Result<HandshakeRecord, HandshakeError> {
        match outcome {
            Ok(()) => self.record.success = true,
            Err((_, Stop::Tool(err))) => return Err(err),
            Err((phase, stop)) => {
                self.record.failed_phase = Some(phase);
                self.record.failure = Some(match stop {
                    Stop::Closed => FailureReason::PeerClosed { phase },
                    Stop::Io(detail) => FailureReason::Io { detail },
                    Stop::Failed(reason) => reason,
                    Stop::Tool(_) => unreachable!("handled above"),
                });
            }
        }
        if self.record.success {
            self.close_politely().await;
        } else {
            self.conn.shutdown(self.config.step_timeout).await;
        }
        // The polite close may answer a ping: counted too.
        self.record.bytes_sent = self.conn.sent;
        self.record.bytes_received = self.conn.received;
        Ok(self.record)
    }

    /// Ends a successful handshake without a reset: a peer that pinged us
    /// in the same moment as our own ping gets its pong, then we send FIN
    /// and read (and drop) whatever it still sends until it closes too.
    /// Closing with unread bytes in the receive buffer would make the kernel
    /// answer with RST, which the peer sees as the connection failing.
    async fn close_politely(&mut self) {
        let linger = self.config.step_timeout.min(CLOSE_LINGER);
        let answer_pings = async {
            for _ in 0..MAX_MESSAGES_PER_PHASE {
                match self.recv().await {
                    Ok(Incoming::Ping(n)) => {
                        if self.send(NetworkMessage::Pong(n)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(PONG_WINDOW.min(linger), answer_pings).await;
        self.conn.shutdown(linger).await;
        self.conn.drain_until_closed(linger).await;
    }
}

async fn within<T>(
    phase: Phase,
    deadline: Instant,
    work: impl std::future::Future<Output = Result<T, Stop>>,
) -> Result<T, (Phase, Stop)> {
    match tokio::time::timeout_at(deadline, work).await {
        Err(_) => Err(timeout(phase)),
        Ok(result) => result.map_err(|stop| (phase, stop)),
    }
}

fn timeout(phase: Phase) -> (Phase, Stop) {
    (phase, Stop::Failed(FailureReason::Timeout { phase }))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
