//! The campaign preview: ask a coordinator which campaign it runs, before
//! consent and without pairing (one connection, one line each way).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::lines::read_message;
use super::RendezvousError;
use crate::net::line::LineConnection;
use crate::proto::rendezvous::{
    self as proto, CampaignInfo, ClientMessage, ServerMessage, MAX_LINE,
};

/// Sends `campaign_request` and returns the coordinator's `campaign`,
/// unchecked: the caller checks it ([`CampaignInfo::check`]) before using
/// any of it. A coordinator older than the preview answers `unknown_type`
/// and one without a campaign `no_campaign`, both as
/// [`RendezvousError::Server`]. `timeout` bounds the whole exchange.
pub async fn fetch_campaign(
    server: SocketAddr,
    timeout: Duration,
) -> Result<CampaignInfo, RendezvousError> {
    let exchange = async {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|cause| RendezvousError::Connect { server, cause })?;
        let mut conn = LineConnection::new(stream, MAX_LINE);
        conn.write_line(&proto::encode_client(&ClientMessage::CampaignRequest))
            .await?;
        match read_message(&mut conn).await? {
            ServerMessage::Campaign { campaign } => Ok(campaign),
            other => Err(RendezvousError::Protocol(format!(
                "expected `campaign`, got {other:?}"
            ))),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| RendezvousError::Timeout(timeout, "asking for the campaign"))?
}
