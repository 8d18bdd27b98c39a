//! The NAT lab: network namespaces joined by user-space NAT emulators (Linux only).
//!
//! One `NAME-internet` namespace routes between public addresses and holds the
//! servers' addresses. Each host is a `NAME-HOST` namespace whose only device
//! is a TUN device; its router is a [`nat::Nat`] inside this process, bridging
//! that device and a TUN device in the internet namespace.
//!
//! Layout: [`nat`] (the emulator core, sans-io), [`scenario`] (TOML scenario
//! files), [`netns`] and [`tun`] (namespace and device plumbing), [`driver`]
//! (the tokio loop around one router), [`events`] (the ground-truth log),
//! [`lock`] (one lab per name), [`instance`] (build, run, tear down),
//! [`bench`] (`lab bench`), [`services`] (our servers inside a lab),
//! [`pair`] (trials between two hosts coordinated by the lab; the skew experiment),
//! [`campaign`] (`lab run`: a whole campaign with the real binaries).

pub mod bench;
pub mod campaign;
pub mod driver;
pub mod events;
pub mod instance;
pub mod lock;
pub mod nat;
pub mod netns;
pub mod pair;
pub mod scenario;
pub mod services;
pub mod tun;

pub use events::LabEvent;
pub use instance::{remove_stale, start_from_file, Lab, LabError, LabInfo, LabOptions, INTERNET};
pub use scenario::Scenario;
