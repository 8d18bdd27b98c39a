//! HTTP/1 calls for the collector and upload tests: through a `ureq` agent
//! (status and body), or written byte for byte over a fresh connection from
//! a chosen loopback source (status, headers and body as sent); and a
//! server that answers every request with one canned response.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::sockets::connect_from;

/// A `ureq` agent whose every call ends within 20 s.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

/// POSTs `body` to /v1/results: (status, body text).
pub fn post(agent: &ureq::Agent, base: &str, body: &[u8]) -> (u16, String) {
    answer(
        agent
            .post(&format!("{base}/v1/results"))
            .set("Content-Type", "application/json")
            .send_bytes(body),
    )
}

/// GETs `path` with an optional bearer token: (status, body text).
pub fn get(agent: &ureq::Agent, base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = agent.get(&format!("{base}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    answer(request.call())
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("HTTP request failed: {e}"),
    }
}

/// The `error` field of a JSON error answer.
pub fn error_message(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error answers are JSON ({e}): {body}"));
    value["error"].as_str().expect("an error field").to_string()
}

/// An HTTP server on 127.0.0.1:0 that answers every request with one canned
/// response (status line, headers and body as given): what a misconfigured
/// proxy or a wrong URL answers instead of a collector.
pub struct CannedHttp {
    pub addr: SocketAddr,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CannedHttp {
    pub fn start(response: &'static str) -> CannedHttp {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        CannedHttp { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One HTTP/1.1 exchange over a fresh connection from `from`: (status,
/// headers, body). `request` is sent as given; the answer is read to EOF.
pub fn raw_exchange(from: IpAddr, to: SocketAddr, request: &[u8]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = connect_from(from, to);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    parse_answer(&answer)
}

/// (status, headers, body) of an HTTP answer; status 0 when there is none.
pub fn parse_answer(answer: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// POSTs `body` to /v1/results from `from` over a fresh connection: (status, headers, body).
pub fn post_from(from: IpAddr, to: SocketAddr, body: &[u8]) -> (u16, String, String) {
    let mut request = format!(
        "POST /v1/results HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_exchange(from, to, &request)
}
