//! The thin tokio driver of one router, or of a carrier-grade NAT with the
//! routers behind it: reads the TUN devices, feeds the sans-io cores, writes
//! what they return, and hands packets between chained cores in memory.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use super::events::EventLog;
use super::nat::{Nat, Port};
use super::tun::Tun;

/// Largest packet a TUN device hands us (its MTU is 1500; leave room).
const MAX_PACKET: usize = 65_535;
/// Packets queued between the readers and the router before readers wait.
const QUEUE: usize = 4096;

/// One emulator core and the LAN devices of its hosts, by the host's address.
pub struct RouterCore {
    pub name: String,
    pub nat: Nat,
    pub lans: Vec<(Ipv4Addr, Tun)>,
}

/// A router whose WAN is a TUN device in the internet namespace (or, behind
/// a kernel carrier-grade NAT, in that NAT's namespace), with the routers
/// whose WAN is one of its LAN ports (home NATs behind an emulator
/// carrier-grade NAT). A core behind is reached at its `public_ip`, which
/// is an address of the outer router's LAN (shared space, 100.64.0.0/10).
pub struct RouterIo {
    pub outer: RouterCore,
    pub wan: Tun,
    pub behind: Vec<RouterCore>,
}

#[derive(Clone, Copy)]
enum Side {
    Wan,
    /// A LAN device of core `usize` (0 is the outer router).
    Lan(usize),
}

struct Ingress {
    side: Side,
    packet: Vec<u8>,
    at: Instant,
}

/// A packet from one core into another, in memory.
enum Handoff {
    /// Into core `usize` from its WAN side.
    Wan(usize),
    /// Into the outer core from its LAN side.
    OuterLan,
}

/// Runs the router (and those behind it) until `shutdown` turns true. Must run inside a tokio runtime.
pub async fn run_router(io: RouterIo, events: Arc<EventLog>, mut shutdown: watch::Receiver<bool>) {
    let RouterIo { outer, wan, behind } = io;
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let wan = match wan.into_async() {
        Ok(wan) => Arc::new(wan),
        Err(e) => {
            return eprintln!(
                "lab: router {}: cannot watch its WAN device: {e}",
                outer.name
            )
        }
    };
    let mut cores = Vec::new();
    // Per core, its hosts' devices by address.
    let mut lan_devices: Vec<HashMap<Ipv4Addr, Arc<AsyncFd<Tun>>>> = Vec::new();
    for (index, core) in std::iter::once(outer).chain(behind).enumerate() {
        let mut by_host = HashMap::new();
        for (host, tun) in core.lans {
            match tun.into_async() {
                Ok(tun) => {
                    let tun = Arc::new(tun);
                    tokio::spawn(read_loop(tun.clone(), Side::Lan(index), tx.clone()));
                    by_host.insert(host, tun);
                }
                Err(e) => {
                    return eprintln!("lab: router {}: cannot watch a LAN device: {e}", core.name)
                }
            }
        }
        lan_devices.push(by_host);
        cores.push((core.name, core.nat));
    }
    // The outer core's LAN addresses that are the WAN of a core behind it.
    let behind_at: HashMap<Ipv4Addr, usize> = cores
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, (_, nat))| (nat.config().public_ip, i))
        .collect();
    tokio::spawn(read_loop(wan.clone(), Side::Wan, tx));

    loop {
        let wake = cores
            .iter()
            .filter_map(|(_, nat)| nat.poll_timeout())
            .min()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            ingress = rx.recv() => match ingress {
                Some(Ingress { side: Side::Wan, packet, at }) => cores[0].1.handle_wan(&packet, at),
                Some(Ingress { side: Side::Lan(i), packet, at }) => cores[i].1.handle_lan(&packet, at),
                None => break,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                let now = Instant::now();
                for (_, nat) in &mut cores {
                    nat.handle_timeout(now);
                }
            }
        }
        // Drain every core until no packet moves: a handoff can make the
        // receiving core transmit at once (a zero-delay link).
        let now = Instant::now();
        loop {
            let mut handoffs = Vec::new();
            for (i, (name, nat)) in cores.iter_mut().enumerate() {
                // Events first: a packet sent may wake a client that reads the log at once
                // (a deleted mapping must be in the log before the answer saying so leaves).
                events.record(name, std::iter::from_fn(|| nat.poll_event()));
                while let Some(transmit) = nat.poll_transmit() {
                    let device = match (i, transmit.port) {
                        (0, Port::Wan) => Some(&wan),
                        (_, Port::Wan) => {
                            handoffs.push((Handoff::OuterLan, transmit.packet));
                            continue;
                        }
                        (0, Port::Lan(host)) => match behind_at.get(&host) {
                            Some(&inner) => {
                                handoffs.push((Handoff::Wan(inner), transmit.packet));
                                continue;
                            }
                            None => lan_devices[0].get(&host),
                        },
                        (_, Port::Lan(host)) => lan_devices[i].get(&host),
                    };
                    // A refused write is a packet lost on the wire, as on a full real queue.
                    if let Some(device) = device {
                        let _ = device.get_ref().send(&transmit.packet);
                    }
                }
            }
            if handoffs.is_empty() {
                break;
            }
            for (to, packet) in handoffs {
                match to {
                    Handoff::Wan(i) => cores[i].1.handle_wan(&packet, now),
                    Handoff::OuterLan => cores[0].1.handle_lan(&packet, now),
                }
            }
        }
    }
}

async fn read_loop(tun: Arc<AsyncFd<Tun>>, side: Side, tx: mpsc::Sender<Ingress>) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let Ok(mut guard) = tun.readable().await else {
            return;
        };
        match guard.try_io(|inner| inner.get_ref().recv(&mut buf)) {
            Ok(Ok(n)) => {
                let ingress = Ingress {
                    side,
                    packet: buf[..n].to_vec(),
                    at: Instant::now(),
                };
                if tx.send(ingress).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}
