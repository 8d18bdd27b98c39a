//! punchscope's NAT lab (Linux only): network namespaces joined by user-space
//! NAT emulators, so every NAT behaviour runs on one machine.
//!
//! One `NAME-internet` namespace routes between public addresses and holds the
//! servers' addresses. Each host is a `NAME-HOST` namespace whose only device
//! is a TUN device; its router is a [`nat::Nat`] inside this process, bridging
//! that device and a TUN device in the internet namespace.
//!
//! Layout:
//! - [`kernel`]: real Linux NATs (nftables, conntrack) as lab routers, and
//!   their port mapping daemon (miniupnpd: NAT-PMP, PCP).
//! - [`stun`]: the classic STUN responder miniupnpd checks its address with.
//! - [`nat`]: the emulator core, sans-io (packets and time in, packets and
//!   events out).
//! - [`scenario`]: TOML scenario files (strict: unknown keys are errors with
//!   their line).
//! - [`netns`] and [`tun`]: namespace and device plumbing.
//! - [`driver`]: the tokio loop around one router.
//! - [`events`]: the ground-truth log of what every router did.
//! - [`lock`]: one lab per name; a stale lab is told from a running one.
//! - [`instance`]: build, run and tear down a lab.
//! - [`bench`]: the lab's own benchmarks (core packets/s, TUN-path latency).
//!
//! This crate knows nothing of punchscope's protocols: what punchscope runs
//! inside a lab (servers, campaigns, experiments) lives in the `punchscope`
//! crate's `lab` module, behind its `lab` feature, so the volunteer's tool
//! builds without any of this.

#[cfg(not(target_os = "linux"))]
compile_error!("punchscope-lab needs Linux (network namespaces and /dev/net/tun)");

pub mod bench;
pub mod driver;
pub mod events;
pub mod instance;
pub mod kernel;
pub mod lock;
pub mod nat;
pub mod netns;
pub mod scenario;
pub mod stun;
pub mod tun;

pub use events::LabEvent;
pub use instance::{remove_stale, start_from_file, Lab, LabError, LabInfo, LabOptions, INTERNET};
pub use scenario::Scenario;
