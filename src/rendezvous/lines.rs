//! Reading one coordinator line, bounded in length, as a decoded message or the error it means.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use super::RendezvousError;
use crate::proto::rendezvous::{self as proto, ServerMessage, MAX_LINE};

/// The next message; a coordinator `error` becomes [`RendezvousError::Server`]
/// and EOF [`RendezvousError::Closed`].
pub(super) async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<ServerMessage, RendezvousError> {
    let mut line = Vec::with_capacity(256);
    let limit = u64::try_from(MAX_LINE).expect("MAX_LINE fits in u64");
    let n = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(RendezvousError::Closed);
    }
    let text = proto::frame(&line).map_err(|e| RendezvousError::Protocol(e.to_string()))?;
    match proto::decode_server(text).map_err(|e| RendezvousError::Protocol(e.to_string()))? {
        ServerMessage::Error {
            code,
            message,
            retry_after_ms,
            ..
        } => Err(RendezvousError::Server {
            code,
            message,
            retry_after: retry_after_ms.map(std::time::Duration::from_millis),
        }),
        msg => Ok(msg),
    }
}
