//! `probe --campaign`: the coordinator hands out its campaign before consent;
//! the probe checks it as untrusted input and falls back to explicit flags
//! when the coordinator offers none. Loopback only: the happy path, with
//! public (documentation) addresses, runs in the lab (tests/lab_field.rs).

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use punchscope::net::address::AddressPolicy;
use punchscope::probe::campaign::{preview, CampaignPreview};
use punchscope::proto::rendezvous::{self as proto, CampaignInfo, ErrorCode, ServerMessage};
use support::rendezvous::*;
use support::WAIT;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn campaign(echo: Vec<SocketAddr>) -> CampaignInfo {
    CampaignInfo {
        name: "loopback pilot".into(),
        operator: "Test Operator".into(),
        contact: "ops@example.org".into(),
        echo,
        collector: Some("https://collector.example".into()),
        privacy_notice: "We keep ports and timings.".into(),
    }
}

fn with_campaign(
    campaign: Option<CampaignInfo>,
) -> punchscope::server::rendezvous::RendezvousConfig {
    let mut config = fast_config(plan(1, "[\"simultaneous\"]", 0, 1));
    config.coordinator.campaign = campaign;
    config
}

/// Runs the real binary with `args` off the async executor.
async fn probe(args: Vec<String>) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_punchscope"))
            .arg("probe")
            .args(&args)
            .env("XDG_STATE_HOME", home.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_coordinator_hands_out_its_campaign_before_consent() {
    let info = campaign(vec!["127.0.0.1:3478".parse().unwrap()]);
    let server = start(with_campaign(Some(info.clone()))).await;
    let got = preview(
        &server.addr.to_string(),
        AddressPolicy::PublicOrLoopback,
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(got, CampaignPreview::Offered(info));
    server.stop().await;
}

#[tokio::test]
async fn a_campaign_naming_a_non_public_echo_server_is_refused_before_anything_is_measured() {
    let target = CountingListener::start(ip(1)).await;
    let server = start(with_campaign(Some(campaign(vec![target.addr])))).await;
    let out = probe(vec![
        "--campaign".into(),
        server.addr.to_string(),
        "--yes".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("campaign this probe refuses") && stderr.contains("loopback"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Campaign:"),
        "no consent screen for a refused campaign: {stderr}"
    );
    assert_eq!(
        target.connections(),
        0,
        "nothing reached the named echo server"
    );
    server.stop().await;
}

/// `--campaign` repeated names more addresses of the same coordinator
/// (IPv4 and IPv6 trials without DNS): the campaign is asked of the first
/// only, and a refused campaign sends nothing to the others either.
#[tokio::test]
async fn a_repeated_campaign_flag_asks_the_first_address_and_nothing_reaches_the_others() {
    let echo = CountingListener::start(ip(1)).await;
    let second = CountingListener::start(ip(2)).await;
    let server = start(with_campaign(Some(campaign(vec![echo.addr])))).await;
    let out = probe(vec![
        "--campaign".into(),
        server.addr.to_string(),
        "--campaign".into(),
        second.addr.to_string(),
        "--yes".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("coordinator `{}`", server.addr)) && stderr.contains("loopback"),
        "the first address's campaign was refused: {stderr}"
    );
    assert_eq!(
        (echo.connections(), second.connections()),
        (0, 0),
        "nothing reached the echo server or the second address"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_a_campaign_the_probe_asks_for_explicit_flags() {
    let server = start(with_campaign(None)).await;
    let got = preview(&server.addr.to_string(), AddressPolicy::Public, WAIT)
        .await
        .unwrap();
    assert!(matches!(got, CampaignPreview::NotOffered { .. }), "{got:?}");
    let out = probe(vec![
        "--campaign".into(),
        server.addr.to_string(),
        "--yes".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("give --echo"), "{stderr}");
    server.stop().await;
}

/// A coordinator that predates the preview: every unknown first line is
/// answered `unknown_type`, as the real one of that time did.
#[tokio::test]
async fn an_older_coordinator_refuses_the_preview_cleanly_and_the_probe_falls_back() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let old = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        assert!(line.contains("\"campaign_request\""), "{line}");
        let refusal = proto::error_message(
            ErrorCode::UnknownType,
            "unknown message type \"campaign_request\"",
        );
        write
            .write_all(&proto::encode_server(&refusal))
            .await
            .unwrap();
    });
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        preview(&addr.to_string(), AddressPolicy::Public, WAIT),
    )
    .await
    .unwrap()
    .unwrap();
    match got {
        CampaignPreview::NotOffered { why } => assert!(why.contains("older"), "{why}"),
        other => panic!("{other:?}"),
    }
    old.await.unwrap();
    // The line an older client would not know how to read is one it never asks for.
    let line = proto::encode_server(&ServerMessage::Campaign {
        campaign: campaign(vec!["198.51.100.10:3478".parse().unwrap()]),
    });
    assert!(line.len() < proto::MAX_LINE);
}
