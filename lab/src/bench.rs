//! Benchmarks of the lab itself (`punchscope lab bench`): packets per second
//! through one emulator core, and the latency the full TUN path adds per packet.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pnet_packet::tcp::TcpFlags;
use punchscope_analysis::nat::{Allocation, Filtering, Mapping};
use serde::Serialize;

use super::instance::{Lab, LabError, LabOptions};
use super::nat::packet::build;
use super::nat::{Nat, NatConfig, Port};
use super::netns;
use super::scenario::Scenario;

/// Throughput of the sans-io core for one packet size.
#[derive(Debug, Clone, Serialize)]
pub struct CoreThroughput {
    pub payload_bytes: usize,
    pub flows: usize,
    pub packets: u64,
    pub seconds: f64,
    pub packets_per_second: f64,
}

/// Round-trip times of 1-byte TCP ping-pongs, through a lab NAT and on loopback.
#[derive(Debug, Clone, Serialize)]
pub struct TunLatency {
    pub round_trips: usize,
    pub through_nat_median_us: f64,
    pub through_nat_p99_us: f64,
    pub loopback_median_us: f64,
    /// (median through the NAT - median on loopback) / 2: each round trip crosses the NAT once each way.
    pub added_per_packet_us: f64,
}

/// Pushes data segments of `flows` flows through one NAT, both directions, for about `duration`.
pub fn core_throughput(payload_bytes: usize, flows: usize, duration: Duration) -> CoreThroughput {
    let public = "203.0.113.2".parse().unwrap();
    let mut nat = Nat::new(NatConfig::nat(
        Mapping::Eim,
        Filtering::Apdf,
        Allocation::Preserve,
        public,
    ));
    let server = SocketAddrV4::new("198.51.100.10".parse().unwrap(), 8333);
    let payload = vec![0xa5u8; payload_bytes];
    let now = Instant::now();
    let mut outbound = Vec::with_capacity(flows);
    let mut inbound = Vec::with_capacity(flows);
    for i in 0..flows {
        let internal = SocketAddrV4::new("192.168.1.2".parse().unwrap(), 10_000 + i as u16);
        // Open the mapping with a SYN, then benchmark the data path.
        nat.handle_lan(&build::tcp(internal, server, TcpFlags::SYN, 64, b""), now);
        let syn = nat.poll_transmit().expect("SYN forwarded");
        assert_eq!(syn.port, Port::Wan);
        let external =
            SocketAddrV4::new(public, u16::from_be_bytes([syn.packet[20], syn.packet[21]]));
        outbound.push(build::tcp(internal, server, TcpFlags::ACK, 64, &payload));
        inbound.push(build::tcp(server, external, TcpFlags::ACK, 60, &payload));
    }
    while nat.poll_event().is_some() {}
    let started = Instant::now();
    let mut packets = 0u64;
    while started.elapsed() < duration {
        for i in 0..flows {
            let at = Instant::now();
            nat.handle_lan(&outbound[i], at);
            nat.handle_wan(&inbound[i], at);
            while let Some(t) = nat.poll_transmit() {
                std::hint::black_box(t);
                packets += 1;
            }
        }
        while nat.poll_event().is_some() {}
    }
    let seconds = started.elapsed().as_secs_f64();
    CoreThroughput {
        payload_bytes,
        flows,
        packets,
        seconds,
        packets_per_second: packets as f64 / seconds,
    }
}

const BENCH_SCENARIO: &str = r#"
[[nat]]
name = "nat"
mapping = "eim"
filtering = "eif"
[[host]]
name = "host"
nat = "nat"
"#;

/// Measures ping-pong RTT from a host through a zero-delay NAT to the internet
/// namespace, and the same ping-pong on loopback inside the internet namespace.
pub fn tun_latency(lab_name: &str, round_trips: usize) -> Result<TunLatency, LabError> {
    let scenario = Scenario::parse(BENCH_SCENARIO).expect("built-in scenario");
    let lab = start_lab(lab_name, scenario)?;
    let server: SocketAddr = "198.51.100.10:7000".parse().unwrap();
    let listener = lab
        .run_in("internet", || TcpListener::bind(server))?
        .map_err(bench_io)?;
    let echo = std::thread::spawn(move || {
        // Two clients: the lab host, then the loopback baseline.
        for _ in 0..2 {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut byte = [0u8; 1];
            while stream.read_exact(&mut byte).is_ok() {
                if stream.write_all(&byte).is_err() {
                    break;
                }
            }
        }
    });
    let through_nat = lab
        .run_in("host", || ping_pong(server, round_trips))?
        .map_err(bench_io)?;
    let loopback = netns::run_in(&lab.internet_netns(), || ping_pong(server, round_trips))?
        .map_err(bench_io)?;
    let _ = echo.join();
    lab.shutdown()?;
    let nat_median = percentile(&through_nat, 0.5);
    let loop_median = percentile(&loopback, 0.5);
    Ok(TunLatency {
        round_trips,
        through_nat_median_us: nat_median,
        through_nat_p99_us: percentile(&through_nat, 0.99),
        loopback_median_us: loop_median,
        added_per_packet_us: (nat_median - loop_median) / 2.0,
    })
}

/// Starts a bench lab with no event log.
pub fn start_lab(name: &str, scenario: Scenario) -> Result<Lab, LabError> {
    Lab::start(
        scenario,
        LabOptions {
            name: name.to_string(),
            event_log: None,
        },
    )
}

fn bench_io(e: std::io::Error) -> LabError {
    LabError::Traffic(e)
}

/// Round-trip times in microseconds of `count` 1-byte exchanges.
fn ping_pong(server: SocketAddr, count: usize) -> std::io::Result<Vec<f64>> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut rtts = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    // A few warm-up exchanges settle the mapping and the caches.
    for i in 0..count + 20 {
        let started = Instant::now();
        stream.write_all(&[i as u8])?;
        stream.read_exact(&mut byte)?;
        if i >= 20 {
            rtts.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(rtts)
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}
