//! A kernel router's conntrack events (`conntrack -E` in its namespace) as lab events.
//!
//! [`parse_line`] is sans-io and tested in memory; [`ConntrackWatch`] runs the
//! child process and feeds the lab's event log, beside the emulator's events.

use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;

use crate::events::EventLog;
use crate::nat::{NatEvent, Protocol, TimedEvent};
use crate::netns::{self, NetnsError};

/// What happened to a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConntrackChange {
    New,
    Update,
    Destroy,
}

/// One conntrack event about a TCP or UDP flow, from the router's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConntrackEvent {
    pub change: ConntrackChange,
    pub proto: Protocol,
    /// TCP state after the change (`SYN_SENT`, `ESTABLISHED`, ...); none for UDP.
    pub state: Option<String>,
    /// The flow's originator as it sent (a host's LAN endpoint for outbound flows).
    pub internal: SocketAddrV4,
    /// Where the originator sent to.
    pub remote: SocketAddrV4,
    /// Where replies go: the public endpoint of a translated flow.
    pub external: SocketAddrV4,
}

/// Reads one line of `conntrack -E` output; `None` for other protocols and noise.
///
/// ```text
///     [NEW] tcp      6 120 SYN_SENT src=192.168.1.2 dst=198.51.100.10 sport=40000 dport=3478 [UNREPLIED] src=198.51.100.10 dst=203.0.113.2 sport=3478 dport=40000
/// ```
pub fn parse_line(line: &str) -> Option<ConntrackEvent> {
    let mut words = line.split_whitespace();
    let change = match words.next()? {
        "[NEW]" => ConntrackChange::New,
        "[UPDATE]" => ConntrackChange::Update,
        "[DESTROY]" => ConntrackChange::Destroy,
        _ => return None,
    };
    let proto = match words.next()? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let mut state = None;
    let mut values: Vec<(&str, &str)> = Vec::new();
    for word in words {
        match word.split_once('=') {
            Some(pair) => values.push(pair),
            // States are upper case words, `SYN_SENT2` included.
            None if proto == Protocol::Tcp
                && word.starts_with(|c: char| c.is_ascii_uppercase())
                && word
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
            {
                state.get_or_insert_with(|| word.to_string());
            }
            None => {}
        }
    }
    // The first src/dst/sport/dport are the original direction, the second the reply.
    let nth = |key: &str, n: usize| {
        values
            .iter()
            .filter(|(k, _)| *k == key)
            .nth(n)
            .map(|(_, v)| *v)
    };
    let endpoint = |ip: &str, port: &str, n: usize| -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(
            nth(ip, n)?.parse::<Ipv4Addr>().ok()?,
            nth(port, n)?.parse().ok()?,
        ))
    };
    Some(ConntrackEvent {
        change,
        proto,
        state,
        internal: endpoint("src", "sport", 0)?,
        remote: endpoint("dst", "dport", 0)?,
        external: endpoint("dst", "dport", 1)?,
    })
}

/// A running `conntrack -E` in a router namespace, feeding the event log
/// under the router's name until it is dropped.
pub struct ConntrackWatch {
    child: Child,
    reader: Option<JoinHandle<()>>,
}

/// `conntrack -E` could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot start `conntrack -E` in {netns}: {source} (apt-get install conntrack)")]
    Spawn { netns: String, source: io::Error },
}

impl ConntrackWatch {
    pub fn start(
        netns_name: &str,
        router: &str,
        events: Arc<EventLog>,
    ) -> Result<Self, ConntrackError> {
        let mut command = netns::command_in(netns_name, "conntrack")?;
        command
            .arg("-E")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe. If the lab process dies without
        // its teardown (kill -9), the watcher dies with it instead of pinning
        // the deleted namespace.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| ConntrackError::Spawn {
            netns: netns_name.to_string(),
            source,
        })?;
        wait_until_subscribed(&child);
        let stdout = child.stdout.take().expect("piped stdout");
        let router = router.to_string();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(event) = parse_line(&line) {
                    let at = Instant::now();
                    events.record(
                        &router,
                        [TimedEvent {
                            at,
                            event: NatEvent::Conntrack(event),
                        }],
                    );
                }
            }
        });
        Ok(Self {
            child,
            reader: Some(reader),
        })
    }
}

/// Waits (at most 2 s) until the child holds a socket: conntrack opens its
/// netlink socket subscribed to events, so from then on no event of the lab
/// is missed. Returns quietly if it never does (its events are then missing,
/// not wrong).
fn wait_until_subscribed(child: &Child) {
    let fds = format!("/proc/{}/fd", child.id());
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    while Instant::now() < deadline {
        let has_socket = std::fs::read_dir(&fds).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
        });
        if has_socket {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

impl Drop for ConntrackWatch {
    fn drop(&mut self) {
        // Our own child, by its handle: ending it closes the pipe and the reader.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_translated_tcp_flow_gives_its_three_endpoints() {
        let e = parse_line("    [NEW] tcp      6 120 SYN_SENT src=192.168.1.2 dst=198.51.100.10 sport=40000 dport=3478 [UNREPLIED] src=198.51.100.10 dst=203.0.113.2 sport=3478 dport=41000 id=1234").unwrap();
        assert_eq!(e.change, ConntrackChange::New);
        assert_eq!(e.proto, Protocol::Tcp);
        assert_eq!(e.state.as_deref(), Some("SYN_SENT"));
        assert_eq!(e.internal, "192.168.1.2:40000".parse().unwrap());
        assert_eq!(e.remote, "198.51.100.10:3478".parse().unwrap());
        assert_eq!(e.external, "203.0.113.2:41000".parse().unwrap());
    }

    #[test]
    fn udp_destroy_and_other_protocols() {
        let e = parse_line("[DESTROY] udp      17 src=192.168.1.2 dst=198.51.100.10 sport=5 dport=6 src=198.51.100.10 dst=203.0.113.2 sport=6 dport=5").unwrap();
        assert_eq!(
            (e.change, e.proto, e.state),
            (ConntrackChange::Destroy, Protocol::Udp, None)
        );
        assert!(parse_line(
            " [NEW] icmp     1 30 src=192.168.1.2 dst=198.51.100.10 type=8 code=0 id=7"
        )
        .is_none());
        assert!(
            parse_line("conntrack v1.4.7 (conntrack-tools): 3 flow events have been shown.")
                .is_none()
        );
        assert!(
            parse_line("[UPDATE] tcp 6 60 SYN_RECV src=1.2.3.4").is_none(),
            "truncated"
        );
    }
}
