//! Reading one coordinator line, bounded in length, as a decoded message or the error it means.

use tokio::io::AsyncRead;

use super::RendezvousError;
use crate::net::line::{LineConnection, LineConnectionError};
use crate::proto::rendezvous::{self as proto, ServerMessage};

/// The next message; a coordinator `error` becomes [`RendezvousError::Server`]
/// and EOF [`RendezvousError::Closed`]. The caller bounds the wait.
pub(super) async fn read_message<R: AsyncRead + Unpin>(
    conn: &mut LineConnection<R>,
) -> Result<ServerMessage, RendezvousError> {
    let line = match conn.read_line().await {
        Ok(Some(line)) => line,
        Ok(None) => return Err(RendezvousError::Closed),
        Err(LineConnectionError::Io(e)) => return Err(RendezvousError::Io(e)),
        Err(e) => return Err(RendezvousError::Protocol(e.to_string())),
    };
    match proto::decode_server(&line).map_err(|e| RendezvousError::Protocol(e.to_string()))? {
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
