//! The classifier against a loopback echo server: no NAT, so everything must read as open and preserved.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punchscope::analysis::classify::{AllocationPattern, Classification, DialOutcome, Finding};
use punchscope::analysis::nat::{Filtering, Mapping};
use punchscope::classify::{classify, ClassifyConfig, ClassifyError};
use punchscope::server::echo::EchoConfig;
use support::echo::*;
use support::sockets::free_port;
use tokio::io::AsyncWriteExt;

fn config(servers: &[SocketAddr]) -> ClassifyConfig {
    ClassifyConfig {
        servers: servers.iter().map(ToString::to_string).collect(),
        connect_timeout: Duration::from_secs(2),
        ..ClassifyConfig::default()
    }
}

async fn run(config: &ClassifyConfig) -> Result<Classification, ClassifyError> {
    tokio::time::timeout(Duration::from_secs(20), classify(config))
        .await
        .expect("classification finishes within its bounds")
}

#[tokio::test]
async fn loopback_is_no_nat_with_open_filtering_and_preserved_ports() {
    let server = start(fast_config()).await;
    let started = Instant::now();
    let result = run(&config(&[server.primary()])).await.unwrap();
    let elapsed = started.elapsed();
    let v = &result.verdict;
    let o = &result.observations;

    assert_eq!(result.server_endpoints, server.endpoints);
    let servers: Vec<_> = o.mapping.iter().map(|p| p.server).collect();
    assert_eq!(
        servers,
        server.endpoints[..3].to_vec(),
        "primary, other port, other IP"
    );
    let local_ports: Vec<_> = o.mapping.iter().map(|p| p.local.port()).collect();
    assert!(
        local_ports.iter().all(|p| *p == local_ports[0]),
        "one local port: {local_ports:?}"
    );
    for p in o.mapping.iter().chain(&o.allocation) {
        assert_eq!(p.observed, Some(p.local), "{p:?}");
    }
    assert_eq!(
        o.allocation.len(),
        ClassifyConfig::default().allocation_probes
    );
    let filtering = o.filtering.as_ref().unwrap();
    assert_ne!(
        filtering.probe.local.port(),
        local_ports[0],
        "filtering uses its own port"
    );
    assert_eq!(filtering.dials.len(), 2);
    for d in &filtering.dials {
        assert!(d.received, "{d:?}");
        assert_eq!(d.server_outcome, Some(DialOutcome::Connected));
    }

    assert!(v.no_nat);
    assert_eq!(
        v.mapping,
        Finding::Known {
            value: Mapping::Eim
        }
    );
    assert_eq!(
        v.filtering,
        Finding::Known {
            value: Filtering::Eif
        }
    );
    assert_eq!(v.port_preserved, Some(true));
    assert_eq!(
        v.allocation,
        Finding::Known {
            value: AllocationPattern::Preserving
        }
    );
    assert_eq!(v.hairpin, Some(true));
    assert!(v.missing.is_empty(), "{:?}", v.missing);
    assert!(v.summary().starts_with("No NAT"), "{}", v.summary());
    // Waits follow measured round trips, not fixed sleeps.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_requested_local_port_is_used_for_the_mapping_probes() {
    let server = start(fast_config()).await;
    let port = free_port();
    let mut cfg = config(&[server.primary()]);
    cfg.local_port = Some(port);
    let result = run(&cfg).await.unwrap();
    assert!(result
        .observations
        .mapping
        .iter()
        .all(|p| p.local.port() == port));
    assert_eq!(result.verdict.port_preserved, Some(true));

    let holder = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    cfg.local_port = Some(holder.local_addr().unwrap().port());
    match run(&cfg).await {
        Err(ClassifyError::LocalPortInUse { port }) => {
            assert_eq!(port, holder.local_addr().unwrap().port())
        }
        other => panic!("expected LocalPortInUse, got {other:?}"),
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_single_server_ip_says_what_it_cannot_tell_apart() {
    let listeners = four_listeners().await.into_iter().take(2).collect();
    let server = start_on(listeners, fast_config());
    let result = run(&config(&[server.primary()])).await.unwrap();
    let v = &result.verdict;
    assert_eq!(result.observations.mapping.len(), 2);
    assert!(matches!(
        &v.mapping,
        Finding::Ambiguous { candidates, .. } if candidates == &[Mapping::Eim, Mapping::Adm]
    ));
    assert!(matches!(
        &v.filtering,
        Finding::Ambiguous { candidates, .. } if candidates == &[Filtering::Eif, Filtering::Adf]
    ));
    assert!(
        v.missing.iter().any(|m| m.contains("second server IP")),
        "{:?}",
        v.missing
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_second_server_is_recorded_and_the_rest_classified() {
    let listeners = four_listeners().await.into_iter().take(1).collect();
    let server = start_on(listeners, fast_config());
    let closed = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let result = run(&config(&[server.primary(), closed])).await.unwrap();
    let failed: Vec<_> = result
        .observations
        .mapping
        .iter()
        .filter(|p| p.error.is_some())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].server, closed);
    assert!(matches!(result.verdict.mapping, Finding::Ambiguous { .. }));
    assert_eq!(
        result.verdict.allocation,
        Finding::Known {
            value: AllocationPattern::Preserving
        }
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn no_server_answering_is_an_error_naming_what_was_tried() {
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    match run(&config(&[closed])).await {
        Err(e @ ClassifyError::ServerUnreachable { .. }) => {
            assert!(e.to_string().contains(&closed.to_string()), "{e}");
        }
        other => panic!("expected ServerUnreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_speaking_another_version_is_refused_clearly() {
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap();
    let fake_task = tokio::spawn(async move {
        let (mut conn, _) = fake.accept().await.unwrap();
        conn.write_all(b"{\"v\":2,\"type\":\"observed\"}\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    match run(&config(&[addr])).await {
        Err(e @ ClassifyError::ServerVersion { .. }) => {
            assert!(
                e.to_string().contains("protocol version 2 is not spoken"),
                "{e}"
            );
        }
        other => panic!("expected ServerVersion, got {other:?}"),
    }
    fake_task.abort();
}

#[tokio::test]
async fn a_rate_limited_dial_back_leaves_filtering_unknown_with_the_reason() {
    let config_ = EchoConfig {
        dial_back_burst: 1,
        dial_back_refill: Duration::from_secs(60),
        ..fast_config()
    };
    let server = start(config_).await;
    let first = run(&config(&[server.primary()])).await.unwrap();
    assert_eq!(
        first.verdict.filtering,
        Finding::Known {
            value: Filtering::Eif
        }
    );
    let second = run(&config(&[server.primary()])).await.unwrap();
    match &second.verdict.filtering {
        Finding::Unknown { reason } => {
            assert!(reason.contains("too many dial-back requests"), "{reason}")
        }
        other => panic!("expected unknown filtering, got {other:?}"),
    }
    assert_eq!(
        second.verdict.mapping,
        Finding::Known {
            value: Mapping::Eim
        }
    );
    server.stop().await.unwrap();
}

/// One classification measures one family: echo servers of both are
/// refused before anything is sent, with what to do instead.
#[tokio::test]
async fn echo_servers_of_both_families_in_one_classification_are_refused() {
    let config = punchscope::classify::ClassifyConfig {
        servers: vec!["127.0.0.1:9".into(), "[::1]:9".into()],
        ..Default::default()
    };
    let e = punchscope::classify::classify(&config).await.unwrap_err();
    assert!(
        matches!(e, punchscope::classify::ClassifyError::MixedFamilies { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("classify each apart"), "{e}");
}
