//! What stops a probe run, each saying what the volunteer can do about it.
//! Not finding a peer or being stopped are outcomes ([`super::RunEnding`]), not errors.

use std::io;
use std::path::PathBuf;

use crate::classify::ClassifyError;
use crate::node::NodeError;
use crate::portmap::PortMapError;
use crate::rendezvous::RendezvousError;
use crate::upload::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot resolve the coordinator `{target}`: {cause}; give HOST[:PORT] and check your DNS"
    )]
    Resolve { target: String, cause: io::Error },
    #[error("the coordinator `{target}` has no address; check the name")]
    NoAddress { target: String },
    #[error("the coordinator `{target}` has no address in the IP families this host reached its echo servers in ({reached}); give the coordinator's address in that family")]
    NoAddressInFamily { target: String, reached: String },
    #[error("the coordinator `{coordinator}` describes a campaign this probe refuses ({why}); nothing was measured")]
    CampaignRefused { coordinator: String, why: String },
    #[error("no echo server to classify with: {why}; give --echo HOST:PORT (twice, two IPs) and --collector URL")]
    NoEchoServers { why: String },
    #[error("bridge mode cannot use your node: {0}")]
    Node(#[from] NodeError),
    #[error("could not classify your NAT: {0}")]
    Classify(#[from] ClassifyError),
    #[error("could not ask the gateway for a port mapping: {0}")]
    PortMap(#[from] PortMapError),
    #[error("could not pair through the coordinator: {0}")]
    Coordinator(#[source] RendezvousError),
    #[error("cannot keep the result in the spool {dir}: {cause}; check the folder's permissions and free space, or choose another --spool")]
    Spool { dir: PathBuf, cause: SpoolError },
    #[error("the upload stopped unexpectedly ({0}); the result is in the spool: run `punchscope upload` later")]
    UploadTask(String),
}
