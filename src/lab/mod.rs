//! What punchscope runs inside the NAT lab (Linux, `lab` feature): our servers
//! in a lab, trials coordinated by the lab, whole campaigns and the
//! classification benchmark. The lab itself (namespaces, TUN devices, the NAT
//! emulator) is the `punchscope-lab` crate, re-exported here so that
//! `punchscope::lab::...` names all of it.
//!
//! Layout: [`services`] (our servers inside a lab), [`pair`] (trials between
//! two hosts coordinated by the lab; the skew experiment), [`campaign`]
//! (`lab run`: a whole campaign with the real binaries), [`mod@bench`] (the
//! classification-time part of `lab bench`).

pub mod bench;
pub mod campaign;
pub mod pair;
pub mod services;

pub use punchscope_lab::{
    driver, events, instance, kernel, lock, nat, netns, remove_stale, scenario, start_from_file,
    stun, tun, Lab, LabError, LabEvent, LabInfo, LabOptions, Scenario, INTERNET,
};
