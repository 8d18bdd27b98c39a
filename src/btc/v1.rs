//! v1 (plain) framing: 4-byte magic, 12-byte command, 4-byte length, 4-byte checksum, payload.

use bitcoin::consensus::encode;
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::Magic;
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Conn;
use super::message::{hex, parse_command};
use super::Stop;
use punchscope_analysis::handshake::FailureReason;

/// Bytes in a v1 message header.
pub const HEADER_LEN: usize = 24;

/// The first 16 bytes a v1 initiator sends: magic and the `version` command.
/// A responder that accepts both transports compares them (as Core does).
pub fn version_prefix(magic: Magic) -> [u8; 16] {
    let mut prefix = [0u8; 16];
    prefix[..4].copy_from_slice(&magic.to_bytes());
    prefix[4..11].copy_from_slice(b"version");
    prefix
}

/// A whole framed message, encoded by the `bitcoin` crate.
pub fn encode_message(magic: Magic, message: NetworkMessage) -> Vec<u8> {
    encode::serialize(&RawNetworkMessage::new(magic, message))
}

/// A checked v1 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub command: String,
    pub length: u32,
    pub checksum: [u8; 4],
}

/// Checks a header in the order Bitcoin Core does: magic, command, size.
pub fn parse_header(
    bytes: &[u8; HEADER_LEN],
    magic: Magic,
    max_payload: usize,
) -> Result<Header, FailureReason> {
    if bytes[..4] != magic.to_bytes() {
        return Err(FailureReason::WrongMagic {
            expected: hex(&magic.to_bytes()),
            got: hex(&bytes[..4]),
        });
    }
    let command = parse_command(&bytes[4..16])?;
    let length = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if length as u64 > max_payload as u64 {
        return Err(FailureReason::Oversized {
            len: length as u64,
            max: max_payload as u64,
        });
    }
    let checksum = bytes[20..24].try_into().expect("4 bytes");
    Ok(Header {
        command,
        length,
        checksum,
    })
}

/// First four bytes of SHA256(SHA256(payload)).
pub fn checksum(payload: &[u8]) -> [u8; 4] {
    let hash = sha256d::Hash::hash(payload).to_byte_array();
    [hash[0], hash[1], hash[2], hash[3]]
}

/// Reads one message and returns its command and payload.
pub(crate) async fn read_message<S>(
    conn: &mut Conn<S>,
    magic: Magic,
    max_payload: usize,
) -> Result<(String, Vec<u8>), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut header_bytes = [0u8; HEADER_LEN];
    conn.read_exact(&mut header_bytes).await?;
    let header = parse_header(&header_bytes, magic, max_payload).map_err(Stop::Failed)?;
    let mut payload = vec![0u8; header.length as usize];
    conn.read_exact(&mut payload).await?;
    if checksum(&payload) != header.checksum {
        return Err(Stop::Failed(FailureReason::BadChecksum {
            command: header.command,
        }));
    }
    Ok((header.command, payload))
}
