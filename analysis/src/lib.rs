//! punchscope-analysis: the data contract of punchscope.
//!
//! This crate holds what a probe run produces and what a report reads, with no
//! sockets and no async runtime, so that researchers can depend on it alone.
//!
//! Layout:
//! - [`nat`]: the NAT behaviour vocabulary of RFC 4787 / RFC 5382 (mapping,
//!   filtering, port allocation, what a router answers to an unsolicited SYN).
//!   The lab's emulator is configured with these types and the classifier
//!   reports in them, so "what the lab built" and "what the probe saw" compare
//!   directly.
//! - [`classify`]: what the NAT classifier observed (every probe) and the pure
//!   function that turns observations into a verdict (mapping, filtering,
//!   port allocation, hairpinning) with a sentence a volunteer understands.
//! - [`handshake`]: the record of one Bitcoin P2P handshake (v1 or BIP324
//!   v2): outcome, failure reason, phase durations, bytes, the peer's
//!   `version` fields and the v2 session id.
//! - [`trial`]: punching strategies and the record of one trial as one side saw it.
//! - [`hardnat`]: the NAT-pair class, who does what under `predict` and
//!   `birthday`, their hard caps and the birthday formula.
//! - [`plan`]: probe plans (what a pairing measures), validated on load.
//! - [`portmap`]: what the default gateway answered to port mapping
//!   requests (PCP, NAT-PMP, UPnP IGD) and whether the mapping was removed.
//! - [`result`]: the result of one probe run ([`result::RunResult`], schema
//!   version 1), the document uploaded to and stored by the collector, with
//!   its JSON Schema.
//! - [`privacy`]: what may leave the probe: IP addresses become /24 or /32
//!   prefixes; the strict raw-address check the collector runs on uploads;
//!   [`privacy::PRIVACY_NOTICE`], what the probe shows before asking consent.
//! - [`report`]: `punchscope report`: streams results (files, JSONL, the
//!   collector's export), joins both sides' records of a trial by `trial_id`,
//!   and writes a self-contained HTML report (plotters SVG charts), a JSON
//!   summary and CSVs, with per-trial Wilson 95% intervals and cluster
//!   bootstrap intervals (over pairings and networks) on every rate.
//! - [`release`]: dataset releases: results as gzip JSONL, the report, the
//!   schema, provenance and checksums, byte-identical for the same input.
//! - [`toml_lines`]: line numbers for the errors of strict TOML files (plans,
//!   lab scenarios, campaign configurations).

pub mod classify;
pub mod handshake;
pub mod hardnat;
pub mod nat;
pub mod plan;
pub mod portmap;
pub mod privacy;
pub mod release;
pub mod report;
pub mod result;
pub mod toml_lines;
pub mod trial;
