//! What can go wrong on the client side of the rendezvous protocol, with what to do about it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::rendezvous::ErrorCode;
use punchscope_analysis::plan::PlanError;

/// A client-side failure. `NoPeer` is an expected outcome of waiting, not a bug.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error(
        "cannot reach the coordinator at {server}: {cause}; check the address and your connection"
    )]
    Connect {
        server: SocketAddr,
        cause: io::Error,
    },
    #[error(
        "the coordinator sent nothing for {0:?} while {1}; it may be overloaded, try again later"
    )]
    Timeout(Duration, &'static str),
    #[error("no peer was found within {waited:?}; try again later, or agree on a pair code with another volunteer")]
    NoPeer { waited: Duration },
    #[error("stopped before a peer was found; nothing was measured with a peer")]
    Interrupted,
    #[error("the coordinator refused: {message} ({code:?})")]
    Server {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the coordinator closed the connection (restarted or lost us); run again later")]
    Closed,
    #[error("I/O error talking to the coordinator: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the coordinator sent something this client does not understand ({0}); upgrade punchscope"
    )]
    Protocol(String),
    #[error("the coordinator's plan is not usable: {0}; upgrade punchscope")]
    Plan(#[from] PlanError),
}
