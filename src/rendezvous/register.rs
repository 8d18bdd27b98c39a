//! Registering a trial's local port: connect from it to the coordinator, which reports the public endpoint it saw.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpSocket;

use super::lines::read_message;
use super::RendezvousError;
use crate::net::line::LineConnection;
use crate::proto::rendezvous::{self as proto, ClientMessage, ServerMessage, MAX_LINE};

/// Connects from `socket` (already bound to the trial's local port, with
/// SO_REUSEADDR and SO_REUSEPORT set before binding) to the coordinator,
/// sends `register` with the trial's token (and, for a `mapped` trial, the
/// external port our router mapped to this port, if it did), and returns the source endpoint
/// the coordinator observed: this side's public endpoint for the trial.
///
/// The coordinator closes first, so the TIME_WAIT of this 4-tuple lands on
/// its side; the socket is closed on return and the port can be bound again
/// at once (with the same options) for the trial itself. `timeout` bounds
/// the whole exchange.
pub async fn register_port(
    socket: socket2::Socket,
    server: SocketAddr,
    token: &str,
    mapped_port: Option<u16>,
    timeout: Duration,
) -> Result<SocketAddr, RendezvousError> {
    let exchange = async {
        socket.set_nonblocking(true)?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        let stream = socket
            .connect(server)
            .await
            .map_err(|cause| RendezvousError::Connect { server, cause })?;
        let mut conn = LineConnection::new(stream, MAX_LINE);
        let register = ClientMessage::Register {
            token: token.to_string(),
            mapped_port,
        };
        conn.write_line(&proto::encode_client(&register)).await?;
        let observed = match read_message(&mut conn).await? {
            ServerMessage::Registered { observed } => observed,
            other => {
                return Err(RendezvousError::Protocol(format!(
                    "expected `registered`, got {other:?}"
                )))
            }
        };
        // Wait for the coordinator's FIN so that we close second.
        conn.drain(u64::try_from(MAX_LINE).expect("MAX_LINE fits in u64"))
            .await;
        Ok(observed)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| RendezvousError::Timeout(timeout, "registering a port"))?
}
