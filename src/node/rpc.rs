//! A small Bitcoin Core JSON-RPC client: the three calls bridge mode needs
//! (`addnode HOST:PORT onetry`, `getpeerinfo`, `disconnectnode`), nothing else.
//!
//! The node's RPC credentials (its `.cookie` file, or `user:password`) are
//! sent only in the `Authorization` header, to a loopback URL unless the
//! caller explicitly allows another host, never through a proxy and never
//! after a redirect. They never appear in a URL this client shows, in an
//! error, in a `Debug` print or in a record. Every call has a timeout and
//! reads at most `max_answer_bytes` of the answer.
//!
//! reqwest (the collector client's HTTP crate, here its async API, because
//! the calls are made from inside a trial on the probe's runtime).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

/// Default bound on one RPC call (connect, send, read the answer).
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound on the size of one answer: `getpeerinfo` with a full node's
/// 125 peers is a few hundred kB.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How to authenticate to the node's RPC.
#[derive(Clone, PartialEq, Eq)]
pub enum RpcAuth {
    /// The node's cookie file (`<datadir>/.cookie`, or `<datadir>/<network>/.cookie`),
    /// holding `__cookie__:PASSWORD`; read once when the client is made.
    CookieFile(PathBuf),
    /// `rpcuser`/`rpcpassword` (or an `rpcauth` pair).
    UserPassword { user: String, password: String },
}

impl fmt::Debug for RpcAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcAuth::CookieFile(path) => f.debug_tuple("CookieFile").field(path).finish(),
            RpcAuth::UserPassword { .. } => f.write_str("UserPassword(<redacted>)"),
        }
    }
}

/// Where the node's RPC is and how to reach it.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// `http://127.0.0.1:PORT` (a path such as `/wallet/w` is kept). A
    /// `user:password@` in it is taken as the credentials and removed from
    /// the URL; a cookie file given as well wins.
    pub url: String,
    /// The credentials, when not in the URL.
    pub auth: Option<RpcAuth>,
    /// Send the credentials to a host other than loopback. Bitcoin Core's RPC
    /// is plain HTTP: off the machine, anyone on the path reads them.
    pub allow_remote: bool,
    pub timeout: Duration,
    pub max_answer_bytes: usize,
}

impl RpcConfig {
    /// A loopback node at `url` with `auth`, default timeout and size bound.
    pub fn new(url: &str, auth: Option<RpcAuth>) -> RpcConfig {
        RpcConfig {
            url: url.to_string(),
            auth,
            allow_remote: false,
            timeout: DEFAULT_RPC_TIMEOUT,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// What went wrong talking to the node. No variant holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("invalid node RPC URL {url:?}: {why}; give http://127.0.0.1:PORT (the node's rpcport, e.g. 8332, regtest 18443)")]
    BadUrl { url: String, why: String },
    #[error("the node RPC URL names {host}, which is not loopback: RPC credentials travel in clear text, so punchscope sends them only to 127.0.0.1 or ::1; run punchscope on the node's machine, or pass --node-rpc-allow-remote if the path to {host} is yours")]
    NotLoopback { host: String },
    #[error("no node RPC credentials: give --node-cookie FILE (the node's .cookie, e.g. ~/.bitcoin/.cookie) or http://USER:PASSWORD@127.0.0.1:PORT")]
    NoCredentials,
    #[error("cannot read the node's cookie file {}: {cause}; give the .cookie of the running node (readable by you), e.g. ~/.bitcoin/.cookie or ~/.bitcoin/regtest/.cookie", path.display())]
    Cookie {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the cookie file {} does not hold USER:PASSWORD; is it the node's .cookie?", path.display())]
    BadCookie { path: PathBuf },
    #[error("cannot set up the RPC client: {0}")]
    Setup(String),
    #[error("cannot reach the node's RPC at {url} for `{method}`: {cause}; is the node running with server=1 and this rpcport?")]
    Unreachable {
        url: String,
        method: String,
        cause: String,
    },
    #[error("the node's RPC at {url} did not answer `{method}` within {timeout:?}")]
    Timeout {
        url: String,
        method: String,
        timeout: Duration,
    },
    #[error("the node refused the RPC credentials (HTTP {code}): check --node-cookie (the cookie changes when the node restarts) or the user and password; HTTP 403 means the node's rpcallowip does not admit this address")]
    Unauthorized { code: u16 },
    #[error("the node's answer to `{method}` is larger than {max} bytes")]
    TooLarge { method: String, max: usize },
    #[error("the node answered `{method}` with HTTP {code} and no JSON-RPC answer: is {url} a Bitcoin Core RPC port?")]
    Status {
        url: String,
        method: String,
        code: u16,
    },
    #[error("the node's answer to `{method}` is not what Bitcoin Core sends: {detail}")]
    BadAnswer { method: String, detail: String },
    #[error("the node refused `{method}`: {message} (RPC error {code})")]
    Node {
        method: String,
        code: i64,
        message: String,
    },
}

/// One peer as the node's `getpeerinfo` lists it (the fields bridge mode reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NodePeer {
    /// The node's peer id (`disconnectnode` takes it).
    pub id: u64,
    /// `IP:PORT` of the connection as the node sees it.
    pub addr: String,
    /// `inbound`, `manual`, `outbound-full-relay`, ...
    #[serde(default)]
    pub connection_type: String,
    /// `v1`, `v2` or `detecting` (Bitcoin Core 26+).
    #[serde(default)]
    pub transport_protocol_type: String,
    /// BIP324 session id (hex), empty for v1.
    #[serde(default)]
    pub session_id: String,
    /// The peer's protocol version, 0 until its `version` came.
    #[serde(default)]
    pub version: u32,
    /// The peer's user agent.
    #[serde(default)]
    pub subver: String,
    /// The peer's service bits, hex.
    #[serde(default)]
    pub services: String,
    /// Seconds of the last ping round trip, once a `pong` came.
    #[serde(default)]
    pub pingtime: Option<f64>,
    /// Bytes sent per message type: has `verack` once the node sent it.
    #[serde(default)]
    pub bytessent_per_msg: serde_json::Map<String, Value>,
    /// Bytes received per message type: has `verack` once the peer's came.
    #[serde(default)]
    pub bytesrecv_per_msg: serde_json::Map<String, Value>,
}

impl NodePeer {
    /// Both `verack`s went through: the version handshake is complete from the node's side.
    pub fn version_handshake_complete(&self) -> bool {
        self.bytessent_per_msg.contains_key("verack")
            && self.bytesrecv_per_msg.contains_key("verack")
    }

    /// The service bits as a number (0 when the node sent something else).
    pub fn services_bits(&self) -> u64 {
        u64::from_str_radix(&self.services, 16).unwrap_or(0)
    }
}

/// A client of one node's RPC.
pub struct NodeRpc {
    /// The URL without credentials: safe to show.
    url: String,
    user: String,
    password: String,
    http: reqwest::Client,
    timeout: Duration,
    max_answer_bytes: usize,
}

impl fmt::Debug for NodeRpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeRpc")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl NodeRpc {
    /// Checks the URL (loopback unless allowed otherwise), reads the
    /// credentials and sets up the HTTP client. Sends nothing yet.
    pub fn new(config: &RpcConfig) -> Result<NodeRpc, RpcError> {
        let (url, from_url) = parse_url(&config.url, config.allow_remote)?;
        let (user, password) = match (&config.auth, from_url) {
            (Some(RpcAuth::CookieFile(path)), _) => read_cookie(path)?,
            (Some(RpcAuth::UserPassword { user, password }), _) => (user.clone(), password.clone()),
            (None, Some(pair)) => pair,
            (None, None) => return Err(RpcError::NoCredentials),
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // An HTTP(S)_PROXY from the environment must never see the credentials.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("punchscope/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RpcError::Setup(e.to_string()))?;
        Ok(NodeRpc {
            url,
            user,
            password,
            http,
            timeout: config.timeout,
            max_answer_bytes: config.max_answer_bytes,
        })
    }

    /// The RPC URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One JSON-RPC call; the `result` on success.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let body =
            json!({"jsonrpc": "1.0", "id": "punchscope", "method": method, "params": params});
        let sent = self
            .http
            .post(&self.url)
            .basic_auth(&self.user, Some(&self.password))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let mut response = sent.map_err(|e| self.transport_error(method, &e))?;
        let code = response.status().as_u16();
        if code == 401 || code == 403 {
            return Err(RpcError::Unauthorized { code });
        }
        let too_large = || RpcError::TooLarge {
            method: method.to_string(),
            max: self.max_answer_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_answer_bytes as u64)
        {
            return Err(too_large());
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(method, &e))?
        {
            if answer.len() + chunk.len() > self.max_answer_bytes {
                return Err(too_large());
            }
            answer.extend_from_slice(&chunk);
        }
        // Bitcoin Core answers RPC errors with HTTP 404/500 and the JSON-RPC
        // error in the body (JSON-RPC 1.0), so the body decides, not the code.
        let Ok(reply) = serde_json::from_slice::<Value>(&answer) else {
            return Err(RpcError::Status {
                url: self.url.clone(),
                method: method.to_string(),
                code,
            });
        };
        match reply.get("error") {
            Some(Value::Null) | None => {}
            Some(error) => {
                return Err(RpcError::Node {
                    method: method.to_string(),
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("no message")
                        .chars()
                        .take(300)
                        .collect(),
                })
            }
        }
        reply
            .get("result")
            .cloned()
            .ok_or_else(|| RpcError::BadAnswer {
                method: method.to_string(),
                detail: "neither `result` nor `error`".into(),
            })
    }

    /// `addnode ADDR onetry`: the node opens one outbound connection to
    /// `addr` now, with its own transport preference (`-v2transport`).
    pub async fn addnode_onetry(&self, addr: std::net::SocketAddr) -> Result<(), RpcError> {
        self.call("addnode", json!([addr.to_string(), "onetry"]))
            .await
            .map(drop)
    }

    /// `getpeerinfo`: every peer the node has, handshake done or not.
    pub async fn peers(&self) -> Result<Vec<NodePeer>, RpcError> {
        let answer = self.call("getpeerinfo", json!([])).await?;
        serde_json::from_value(answer).map_err(|e| RpcError::BadAnswer {
            method: "getpeerinfo".into(),
            detail: e.to_string(),
        })
    }

    /// `disconnectnode "" ID`: ends the node's connection to peer `id`.
    pub async fn disconnect(&self, id: u64) -> Result<(), RpcError> {
        self.call("disconnectnode", json!(["", id])).await.map(drop)
    }

    fn transport_error(&self, method: &str, e: &reqwest::Error) -> RpcError {
        if e.is_timeout() {
            return RpcError::Timeout {
                url: self.url.clone(),
                method: method.to_string(),
                timeout: self.timeout,
            };
        }
        // reqwest's texts name the URL, which holds no credentials here.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause.push_str(": ");
            cause.push_str(&s.to_string());
            source = s.source();
        }
        RpcError::Unreachable {
            url: self.url.clone(),
            method: method.to_string(),
            cause,
        }
    }
}

/// The URL without credentials, and the `user:password` it held if any.
/// Refuses anything but `http://` to a loopback address (or `localhost`,
/// taken as 127.0.0.1) unless `allow_remote`.
fn parse_url(
    text: &str,
    allow_remote: bool,
) -> Result<(String, Option<(String, String)>), RpcError> {
    let mut url = reqwest::Url::parse(text.trim()).map_err(|e| RpcError::BadUrl {
        url: shown(text),
        why: e.to_string(),
    })?;
    let bad = |why: &str| RpcError::BadUrl {
        url: shown(text),
        why: why.to_string(),
    };
    if url.scheme() != "http" {
        return Err(bad("Bitcoin Core's RPC speaks plain http://"));
    }
    let credentials = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        let user = percent_decode(url.username());
        let password = percent_decode(url.password().unwrap_or_default());
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Some((user, password))
    };
    if url.port().is_none() {
        return Err(bad("no port"));
    }
    let Some(host) = url.host_str().map(str::to_string) else {
        return Err(bad("no host"));
    };
    let loopback = if host.eq_ignore_ascii_case("localhost") {
        // Pinned to 127.0.0.1 rather than trusting what the resolver says.
        let _ = url.set_ip_host(IpAddr::V4(Ipv4Addr::LOCALHOST));
        true
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    };
    if !loopback && !allow_remote {
        return Err(RpcError::NotLoopback { host });
    }
    Ok((url.to_string(), credentials))
}

/// A URL as it may appear in an error: whatever sits before an `@` is cut.
fn shown(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<credentials>@{}", &text[..scheme], &text[at + 1..])
        }
        (None, Some(at)) => format!("<credentials>@{}", &text[at + 1..]),
        _ => text.to_string(),
    }
}

/// `%XX` sequences of a URL's user or password, decoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `user` and `password` from a cookie file (`__cookie__:HEX`).
fn read_cookie(path: &Path) -> Result<(String, String), RpcError> {
    let text = std::fs::read_to_string(path).map_err(|cause| RpcError::Cookie {
        path: path.to_path_buf(),
        cause,
    })?;
    let line = text.lines().next().unwrap_or_default().trim();
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok((user.to_string(), password.to_string()))
        }
        _ => Err(RpcError::BadCookie {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_pass_unless_remote_is_allowed() {
        for ok in [
            "http://127.0.0.1:8332",
            "http://127.0.0.2:18443/",
            "http://[::1]:8332",
            "http://localhost:8332/wallet/w",
        ] {
            assert!(parse_url(ok, false).is_ok(), "{ok}");
        }
        assert_eq!(
            parse_url("http://localhost:8332", false).unwrap().0,
            "http://127.0.0.1:8332/"
        );
        for remote in [
            "http://192.168.1.5:8332",
            "http://node.example:8332",
            "http://[2001:db8::1]:8332",
        ] {
            assert!(
                matches!(parse_url(remote, false), Err(RpcError::NotLoopback { .. })),
                "{remote}"
            );
            assert!(parse_url(remote, true).is_ok(), "{remote}");
        }
        for bad in [
            "https://127.0.0.1:8332",
            "http://127.0.0.1",
            "127.0.0.1:8332",
            "http://",
        ] {
            assert!(
                matches!(parse_url(bad, false), Err(RpcError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_in_the_url_are_taken_out_and_never_shown() {
        let (url, credentials) = parse_url("http://alice:s%40cret@127.0.0.1:8332", false).unwrap();
        assert_eq!(url, "http://127.0.0.1:8332/");
        assert_eq!(credentials, Some(("alice".into(), "s@cret".into())));
        let refused = parse_url("https://alice:hunter2@127.0.0.1:8332", false).unwrap_err();
        let refused_remote = parse_url("http://alice:hunter2@10.0.0.1:8332", false).unwrap_err();
        let unparsable = parse_url("http://alice:hunter2@127.0.0.1:port", false).unwrap_err();
        for e in [refused, refused_remote, unparsable] {
            let text = e.to_string();
            assert!(
                !text.contains("hunter2") && !text.contains("alice"),
                "{text}"
            );
        }
        let client =
            NodeRpc::new(&RpcConfig::new("http://alice:hunter2@127.0.0.1:8332", None)).unwrap();
        assert!(!format!("{client:?}").contains("hunter2"));
        let auth = RpcAuth::UserPassword {
            user: "alice".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn cookies_are_read_and_a_missing_one_says_where_to_look() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".cookie");
        std::fs::write(&path, "__cookie__:abc123\n").unwrap();
        assert_eq!(
            read_cookie(&path).unwrap(),
            ("__cookie__".to_string(), "abc123".to_string())
        );
        std::fs::write(&path, "no colon").unwrap();
        assert!(matches!(
            read_cookie(&path),
            Err(RpcError::BadCookie { .. })
        ));
        let missing = read_cookie(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains(".bitcoin"), "{missing}");
        assert!(matches!(
            NodeRpc::new(&RpcConfig::new("http://127.0.0.1:8332", None)),
            Err(RpcError::NoCredentials)
        ));
    }

    #[test]
    fn a_peer_is_handshaken_when_both_veracks_passed() {
        let peer: NodePeer = serde_json::from_value(json!({
            "id": 7, "addr": "127.0.0.1:40000", "connection_type": "inbound",
            "transport_protocol_type": "v2", "session_id": "ab", "version": 70016,
            "subver": "/Satoshi:28.1.0/", "services": "0000000000000c09",
            "bytessent_per_msg": {"version": 127, "verack": 24},
            "bytesrecv_per_msg": {"version": 127},
            "unknown_field": true
        }))
        .unwrap();
        assert!(!peer.version_handshake_complete());
        assert_eq!(peer.services_bits(), 0xc09);
        let mut done = peer.clone();
        done.bytesrecv_per_msg.insert("verack".into(), 24.into());
        assert!(done.version_handshake_complete());
    }
}
