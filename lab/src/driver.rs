//! The thin tokio driver of one router: reads its TUN devices, feeds the sans-io core, writes what it returns.

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

/// One router with its devices, ready to run.
pub struct RouterIo {
    pub name: String,
    pub nat: Nat,
    pub wan: Tun,
    /// One device per host behind the router, by the host's address.
    pub lans: Vec<(Ipv4Addr, Tun)>,
}

#[derive(Clone, Copy)]
enum Side {
    Wan,
    Lan,
}

struct Ingress {
    side: Side,
    packet: Vec<u8>,
    at: Instant,
}

/// Runs the router until `shutdown` turns true. Must run inside a tokio runtime.
pub async fn run_router(io: RouterIo, events: Arc<EventLog>, mut shutdown: watch::Receiver<bool>) {
    let RouterIo {
        name,
        mut nat,
        wan,
        lans,
    } = io;
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let wan = match wan.into_async() {
        Ok(wan) => Arc::new(wan),
        Err(e) => return eprintln!("lab: router {name}: cannot watch its WAN device: {e}"),
    };
    let mut lan_by_host = HashMap::new();
    for (host, tun) in lans {
        match tun.into_async() {
            Ok(tun) => {
                let tun = Arc::new(tun);
                tokio::spawn(read_loop(tun.clone(), Side::Lan, tx.clone()));
                lan_by_host.insert(host, tun);
            }
            Err(e) => return eprintln!("lab: router {name}: cannot watch a LAN device: {e}"),
        }
    }
    tokio::spawn(read_loop(wan.clone(), Side::Wan, tx));

    loop {
        let wake = nat.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            ingress = rx.recv() => match ingress {
                Some(Ingress { side: Side::Wan, packet, at }) => nat.handle_wan(&packet, at),
                Some(Ingress { side: Side::Lan, packet, at }) => nat.handle_lan(&packet, at),
                None => break,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                nat.handle_timeout(Instant::now());
            }
        }
        while let Some(transmit) = nat.poll_transmit() {
            let device = match transmit.port {
                Port::Wan => Some(&wan),
                Port::Lan(host) => lan_by_host.get(&host),
            };
            // A refused write is a packet lost on the wire, as on a full real queue.
            if let Some(device) = device {
                let _ = device.get_ref().send(&transmit.packet);
            }
        }
        events.record(&name, std::iter::from_fn(|| nat.poll_event()));
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
