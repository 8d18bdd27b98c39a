//! BIP324 v2 transport over the `bip324` crate's low-level `Handshake` API, which exposes the session id.

use bip324::{
    CipherSession, GarbageResult, Handshake, InboundCipher, Initialized, PacketType, ReceivedKey,
    VersionResult,
};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Conn;
use super::{HandshakeError, Stop};
use punchscope_analysis::handshake::FailureReason;

/// Bytes of an ElligatorSwift-encoded public key.
const KEY_LEN: usize = 64;
/// Bytes of a garbage terminator.
const TERMINATOR_LEN: usize = 16;
/// BIP324: at most 4095 bytes of garbage before the terminator.
pub const MAX_GARBAGE: usize = 4095;
/// Length prefix of every packet.
const LENGTH_LEN: usize = 3;
/// Header byte and authentication tag around each packet's contents.
const PACKET_OVERHEAD: usize = 1 + 16;
/// A long-form message type (0x00 + 12-byte command) before the payload.
const LONG_TYPE_LEN: usize = 13;
/// Decoy packets we skip in a row before giving up on a peer.
const MAX_DECOYS_IN_A_ROW: usize = 1000;

/// What our side of the key exchange sends besides its key.
#[derive(Debug, Clone)]
pub(crate) struct Obfuscation {
    pub garbage: Vec<u8>,
    pub decoys: Vec<Vec<u8>>,
}

impl Obfuscation {
    /// Random garbage of 0..=max_garbage bytes and `decoys` decoy packets of
    /// 1..=64 random bytes each, sent before our version packet.
    pub fn random(max_garbage: usize, decoys: usize) -> Self {
        let mut rng = rand::thread_rng();
        let len = rng.gen_range(0..=max_garbage.min(MAX_GARBAGE));
        let garbage = (0..len).map(|_| rng.gen()).collect();
        let decoys = (0..decoys)
            .map(|_| {
                let n = rng.gen_range(1..=64);
                (0..n).map(|_| rng.gen()).collect()
            })
            .collect();
        Obfuscation { garbage, decoys }
    }
}

/// Runs the BIP324 handshake up to and including the peer's version packet.
pub(crate) async fn key_exchange<S>(
    conn: &mut Conn<S>,
    magic: [u8; 4],
    role: bip324::Role,
    ours: &Obfuscation,
    max_contents: usize,
) -> Result<CipherSession, Stop>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let handshake = Handshake::<Initialized>::new(magic, role).map_err(tool)?;
    let garbage = Some(ours.garbage.as_slice());
    let mut key_buffer = vec![0u8; Handshake::<Initialized>::send_key_len(garbage)];
    let handshake = handshake.send_key(garbage, &mut key_buffer).map_err(tool)?;
    conn.write_all(&key_buffer).await?;

    let mut their_key = [0u8; KEY_LEN];
    conn.read_exact(&mut their_key).await?;
    let handshake = handshake.receive_key(their_key).map_err(|err| match err {
        bip324::Error::V1Protocol => Stop::Failed(FailureReason::V1OnlyPeer),
        other => tool(other),
    })?;

    let decoy_refs: Vec<&[u8]> = ours.decoys.iter().map(Vec::as_slice).collect();
    let decoys = (!decoy_refs.is_empty()).then_some(decoy_refs.as_slice());
    let mut version_buffer = vec![0u8; Handshake::<ReceivedKey>::send_version_len(decoys)];
    let handshake = handshake
        .send_version(&mut version_buffer, decoys)
        .map_err(tool)?;
    conn.write_all(&version_buffer).await?;

    // Read until the peer's garbage terminator; the crate bounds the search
    // to 4095 bytes of garbage.
    let mut received = Vec::with_capacity(TERMINATOR_LEN + 256);
    let mut chunk = [0u8; 512];
    let mut handshake = handshake;
    let (mut handshake, consumed) = loop {
        match handshake.receive_garbage(&received) {
            Ok(GarbageResult::FoundGarbage {
                handshake,
                consumed_bytes,
            }) => break (handshake, consumed_bytes),
            Ok(GarbageResult::NeedMoreData(h)) => {
                handshake = h;
                let n = conn.read_some(&mut chunk).await?;
                received.extend_from_slice(&chunk[..n]);
            }
            Err(bip324::Error::NoGarbageTerminator) => {
                return Err(Stop::Failed(FailureReason::Garbage {
                    detail: format!(
                        "no BIP324 garbage terminator within {} bytes",
                        MAX_GARBAGE + TERMINATOR_LEN
                    ),
                }))
            }
            Err(other) => return Err(tool(other)),
        }
    };
    conn.unread(&received[consumed..]);

    // Decoys may precede the version packet; the first genuine packet ends
    // the handshake (its contents are reserved for future use and ignored).
    for _ in 0..=MAX_DECOYS_IN_A_ROW {
        let mut length = [0u8; LENGTH_LEN];
        conn.read_exact(&mut length).await?;
        let packet_len = handshake.decrypt_packet_len(length).map_err(tool)?;
        check_size(packet_len, max_contents)?;
        let mut packet = vec![0u8; packet_len];
        conn.read_exact(&mut packet).await?;
        match handshake.receive_version(&mut packet) {
            Ok(VersionResult::Complete { cipher }) => return Ok(cipher),
            Ok(VersionResult::Decoy(h)) => handshake = h,
            Err(bip324::Error::Decryption(_)) => {
                return Err(Stop::Failed(FailureReason::DecryptFailed))
            }
            Err(other) => return Err(tool(other)),
        }
    }
    Err(too_many_decoys())
}

/// Reads the next genuine packet's contents, skipping decoys.
pub(crate) async fn read_contents<S>(
    conn: &mut Conn<S>,
    cipher: &mut CipherSession,
    max_contents: usize,
) -> Result<Vec<u8>, Stop>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    for _ in 0..=MAX_DECOYS_IN_A_ROW {
        let mut length = [0u8; LENGTH_LEN];
        conn.read_exact(&mut length).await?;
        let packet_len = cipher.inbound().decrypt_packet_len(length);
        check_size(packet_len, max_contents)?;
        let mut packet = vec![0u8; packet_len];
        conn.read_exact(&mut packet).await?;
        let mut plaintext = vec![0u8; InboundCipher::decryption_buffer_len(packet_len)];
        let packet_type = cipher
            .inbound()
            .decrypt(&packet, &mut plaintext, None)
            .map_err(|err| match err {
                bip324::Error::Decryption(_) => Stop::Failed(FailureReason::DecryptFailed),
                other => tool(other),
            })?;
        if packet_type == PacketType::Genuine {
            plaintext.remove(0);
            return Ok(plaintext);
        }
    }
    Err(too_many_decoys())
}

/// Encrypts one genuine packet.
pub(crate) fn encrypt(cipher: &mut CipherSession, contents: &[u8]) -> Vec<u8> {
    cipher
        .outbound()
        .encrypt_to_vec(contents, PacketType::Genuine, None)
}

/// `packet_len` counts header and tag; the limit applies to a message
/// payload, so the long-form type bytes are allowed on top of it.
fn check_size(packet_len: usize, max_payload: usize) -> Result<(), Stop> {
    let contents = packet_len.saturating_sub(PACKET_OVERHEAD);
    if contents > max_payload + LONG_TYPE_LEN {
        return Err(Stop::Failed(FailureReason::Oversized {
            len: contents as u64,
            max: (max_payload + LONG_TYPE_LEN) as u64,
        }));
    }
    Ok(())
}

fn too_many_decoys() -> Stop {
    Stop::Failed(FailureReason::Garbage {
        detail: format!("more than {MAX_DECOYS_IN_A_ROW} BIP324 decoy packets in a row"),
    })
}

fn tool(err: bip324::Error) -> Stop {
    Stop::Tool(HandshakeError::Bip324(err.to_string()))
}
