//! Loopback harness of the echo, classify and hostile-probe tests: the echo
//! server on 127.0.0.1 and 127.0.0.2, two ports each, with short deadlines,
//! and a reader of its lines.

use std::net::SocketAddr;
use std::time::Duration;

use punchscope::proto::echo::{self, ServerMessage, MAX_LINE};
use punchscope::server::echo::{bind_listener, run, EchoConfig, EchoServerError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;

use super::server_task::ServerTask;
use super::WAIT;

/// An echo server running on the test's runtime.
pub struct TestServer {
    /// 127.0.0.1:P1, 127.0.0.1:P2, 127.0.0.2:P1, 127.0.0.2:P2.
    pub endpoints: Vec<SocketAddr>,
    task: ServerTask<EchoServerError>,
}

impl TestServer {
    /// 127.0.0.1:P1, the endpoint a client is given first.
    pub fn primary(&self) -> SocketAddr {
        self.endpoints[0]
    }

    /// Signals shutdown and waits (bounded) for `run` to return.
    pub async fn stop(self) -> Result<(), EchoServerError> {
        self.task.stop().await
    }
}

/// Both IPs must listen on the same two ports for the other-port and
/// other-IP dial-backs to be meaningful, so the ports come from binding
/// 127.0.0.1:0 and are reused on 127.0.0.2 (retrying if one is taken there).
pub async fn four_listeners() -> Vec<TcpListener> {
    for _ in 0..20 {
        let a = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let (p1, p2) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        let c = bind_listener(SocketAddr::from(([127, 0, 0, 2], p1)));
        let d = bind_listener(SocketAddr::from(([127, 0, 0, 2], p2)));
        if let (Ok(c), Ok(d)) = (c, d) {
            return vec![a, b, c, d];
        }
    }
    panic!("could not find two ports free on both 127.0.0.1 and 127.0.0.2");
}

/// A server on [`four_listeners`].
pub async fn start(config: EchoConfig) -> TestServer {
    start_on(four_listeners().await, config)
}

/// A server on the given listeners (the first is [`TestServer::primary`]).
pub fn start_on(listeners: Vec<TcpListener>, config: EchoConfig) -> TestServer {
    let endpoints = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let task = ServerTask::spawn(|shutdown| run(listeners, config, shutdown));
    TestServer { endpoints, task }
}

/// Config with short deadlines so the tests run fast.
pub fn fast_config() -> EchoConfig {
    EchoConfig {
        request_timeout: Duration::from_millis(500),
        dial_timeout_min: Duration::from_millis(500),
        dial_timeout_max: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        ..EchoConfig::default()
    }
}

/// Reads one server line (bounded wait); `None` at EOF.
pub async fn next_message<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Option<ServerMessage> {
    let mut line = Vec::new();
    let n = tokio::time::timeout(
        WAIT,
        (&mut *reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line),
    )
    .await
    .expect("server answers within the wait")
    .expect("read from server");
    if n == 0 {
        return None;
    }
    let text = echo::frame(&line).expect("well-framed server line");
    Some(echo::decode_server(text).expect("valid server message"))
}

/// Reads until EOF (bounded), returning whether the server closed the connection.
pub async fn closes<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, reader.read_to_end(&mut rest)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}
