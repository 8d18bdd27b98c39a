//! UPnP IGD, sans-io: the SSDP search, the gateway-pinned URLs, a bounded HTTP answer reader, the device description and the SOAP actions.
//!
//! Nothing here touches a socket; the driver (`upnp_driver`) feeds bytes
//! in. Everything a router sends is hostile until checked, and every check
//! is bounded before it reads:
//! - SSDP answers are read only as HTTP heads of at most [`MAX_SSDP`] bytes
//!   and 32 headers; only a `200` with a `LOCATION` counts ([`parse_ssdp_answer`]).
//! - A URL is followed only when it is `http://` on the gateway's own
//!   address, with no credentials ([`gateway_url`]): a LOCATION, URLBase or
//!   controlURL naming another host is an error, never contacted.
//! - HTTP answers are cut at a size ([`HttpReader`]): `Content-Length`,
//!   `chunked` or until the close, nothing past the limit.
//! - XML is parsed by `roxmltree` with DTDs refused, a node limit, and a
//!   depth check before it (its tokenizer recurses once per level).
//!
//! Errors ([`UpnpError`]) are measurement outcomes, recorded in words that
//! hold nothing the router wrote (no URL, no address, no description).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// The gateway's SSDP port (UPnP Device Architecture 1.1, section 1.1.2).
pub const SSDP_PORT: u16 = 1900;
/// Longest SSDP answer read; real ones are a few hundred bytes.
pub const MAX_SSDP: usize = 2048;
/// Longest device description read (miniupnpd's is about 4 KiB).
pub const MAX_DESCRIPTION: usize = 64 * 1024;
/// Longest SOAP answer read (the largest, GetSpecificPortMappingEntry, is under 1 KiB).
pub const MAX_SOAP_ANSWER: usize = 16 * 1024;
/// Longest HTTP head (status line and headers) of any answer.
pub const MAX_HEAD: usize = 8 * 1024;
/// Deepest XML nesting accepted (a description is about 8 deep).
pub const MAX_XML_DEPTH: usize = 32;
/// Most XML nodes parsed.
pub const MAX_XML_NODES: u32 = 8192;
/// Longest URL or value taken from a router's answer.
pub const MAX_VALUE: usize = 512;
/// What the probe writes as the mapping's description on the router.
pub const DESCRIPTION: &str = "punchscope probe";

/// The search targets asked in each SSDP round, newest first.
pub const SEARCH_TARGETS: [&str; 2] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
];

/// Why a router's UPnP answer could not be used. Recorded, never a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpnpError {
    #[error("SSDP answer is not an HTTP answer: {0}")]
    SsdpMalformed(&'static str),
    #[error("SSDP answer has status {0}, not 200")]
    SsdpStatus(u16),
    #[error("SSDP answer has no LOCATION")]
    SsdpNoLocation,
    #[error("answer of {len} bytes or more is longer than the {max} read")]
    Oversized { len: usize, max: usize },
    #[error("{what} is not a usable URL: {why}")]
    Url {
        what: &'static str,
        why: &'static str,
    },
    #[error("{what} is not on the gateway's address: not contacted")]
    OffGateway { what: &'static str },
    #[error("HTTP answer is malformed: {0}")]
    Http(&'static str),
    #[error("HTTP answer has status {0}")]
    HttpStatus(u16),
    #[error("HTTP answer ended before its body")]
    Truncated,
    #[error("XML is malformed or over the limits: {0}")]
    Xml(String),
    #[error("XML nests deeper than {MAX_XML_DEPTH}")]
    XmlTooDeep,
    #[error("the description has no WANIPConnection or WANPPPConnection service")]
    NoWanService,
    #[error("SOAP answer is malformed: {0}")]
    Soap(&'static str),
    #[error("{0}")]
    Io(&'static str),
}

/// An M-SEARCH for `target`, unicast to the gateway (UDA 1.1 section 1.3.2:
/// HOST is the unicast address; MX is left out, a unicast search is answered at once).
pub fn msearch(gateway: SocketAddrV4, target: &str) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {gateway}\r\nMAN: \"ssdp:discover\"\r\nST: {target}\r\nUSER-AGENT: Linux/1 UPnP/1.1 punchscope/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// What an SSDP answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsdpAnswer {
    /// The LOCATION, unchecked (see [`gateway_url`]).
    pub location: String,
}

/// Reads one SSDP answer datagram.
pub fn parse_ssdp_answer(bytes: &[u8]) -> Result<SsdpAnswer, UpnpError> {
    if bytes.len() > MAX_SSDP {
        return Err(UpnpError::Oversized {
            len: bytes.len(),
            max: MAX_SSDP,
        });
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(UpnpError::SsdpMalformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpnpError::SsdpMalformed("more than 32 headers"))
        }
        Err(_) => {
            return Err(UpnpError::SsdpMalformed(
                "not an HTTP status line and headers",
            ))
        }
    }
    let status = response.code.unwrap_or(0);
    if status != 200 {
        return Err(UpnpError::SsdpStatus(status));
    }
    let location = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("location"))
        .ok_or(UpnpError::SsdpNoLocation)?;
    if location.value.len() > MAX_VALUE {
        return Err(UpnpError::Url {
            what: "LOCATION",
            why: "too long",
        });
    }
    let location = std::str::from_utf8(location.value)
        .map_err(|_| UpnpError::Url {
            what: "LOCATION",
            why: "not UTF-8",
        })?
        .trim();
    Ok(SsdpAnswer {
        location: location.to_string(),
    })
}

/// The SSDP search as a state machine: rounds of M-SEARCH (one per
/// [`SEARCH_TARGETS`]) at `interval`, until an answer with a location on
/// the gateway or `give_up`. Time is passed in.
#[derive(Debug)]
pub struct SsdpSearch {
    gateway: SocketAddrV4,
    interval: Duration,
    next_round: Instant,
    give_up: Instant,
    rounds_left: u32,
    /// M-SEARCH datagrams handed out.
    pub sent: u32,
    /// The first usable answer: where the description is.
    pub found: Option<HttpTarget>,
    /// When the first datagram from the gateway came.
    pub first_answer: Option<Instant>,
    /// Unusable answers, in order.
    pub errors: Vec<UpnpError>,
    outbox: Vec<Vec<u8>>,
}

impl SsdpSearch {
    /// `rounds` rounds, `interval` apart, giving up `wait` after the first.
    pub fn new(
        gateway: SocketAddrV4,
        rounds: u32,
        interval: Duration,
        wait: Duration,
        now: Instant,
    ) -> Self {
        SsdpSearch {
            gateway,
            interval,
            next_round: now,
            give_up: now + wait,
            rounds_left: rounds.max(1),
            sent: 0,
            found: None,
            first_answer: None,
            errors: Vec::new(),
            outbox: Vec::new(),
        }
    }

    /// Datagrams to send now.
    pub fn poll_transmit(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if self.is_done(now) {
            return Vec::new();
        }
        if now >= self.next_round && self.rounds_left > 0 {
            self.rounds_left -= 1;
            self.next_round = now + self.interval;
            for target in SEARCH_TARGETS {
                self.outbox.push(msearch(self.gateway, target));
                self.sent += 1;
            }
        }
        std::mem::take(&mut self.outbox)
    }

    /// When to call again (a round or the end).
    pub fn poll_timeout(&self) -> Instant {
        if self.rounds_left > 0 {
            self.next_round.min(self.give_up)
        } else {
            self.give_up
        }
    }

    /// Over: found, or out of time.
    pub fn is_done(&self, now: Instant) -> bool {
        self.found.is_some() || now >= self.give_up
    }

    /// A datagram from the gateway's SSDP port (the driver's socket is
    /// connected to it: nothing else arrives).
    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant) {
        self.first_answer.get_or_insert(now);
        if self.found.is_some() {
            return;
        }
        let checked = parse_ssdp_answer(bytes)
            .and_then(|a| gateway_url("LOCATION", &a.location, None, *self.gateway.ip()));
        match checked {
            Ok(target) => self.found = Some(target),
            Err(e) => self.errors.push(e),
        }
    }
}

/// An HTTP URL on the gateway: where to connect and what to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub addr: SocketAddrV4,
    /// Path and query, as sent on the request line.
    pub path: String,
    /// The parsed URL, for relative URLs found under it.
    url: url::Url,
}

/// `text` (relative to `base` when given) as a URL the probe may fetch:
/// `http`, no credentials, and on `gateway`'s own address. `what` names it in errors.
pub fn gateway_url(
    what: &'static str,
    text: &str,
    base: Option<&HttpTarget>,
    gateway: Ipv4Addr,
) -> Result<HttpTarget, UpnpError> {
    let bad = |why| UpnpError::Url { what, why };
    if text.len() > MAX_VALUE {
        return Err(bad("too long"));
    }
    let url = match base {
        Some(base) => base.url.join(text),
        None => url::Url::parse(text),
    }
    .map_err(|_| bad("does not parse"))?;
    if url.scheme() != "http" {
        return Err(bad("not http"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("carries credentials"));
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) if ip == gateway => {}
        Some(_) => return Err(UpnpError::OffGateway { what }),
        None => return Err(bad("has no host")),
    }
    let port = url.port_or_known_default().ok_or(bad("has no port"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    let path = url[url::Position::BeforePath..url::Position::AfterQuery].to_string();
    Ok(HttpTarget {
        addr: SocketAddrV4::new(gateway, port),
        path: if path.is_empty() { "/".into() } else { path },
        url,
    })
}

/// A GET of the device description.
pub fn get_request(target: &HttpTarget) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: punchscope/{}\r\n\r\n",
        target.path,
        target.addr,
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// An HTTP answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Collects one HTTP answer as it arrives, never more than `max` bytes:
/// [`HttpReader::push`] says when it is complete, [`HttpReader::finish`]
/// gives it (also at the connection's close).
#[derive(Debug)]
pub struct HttpReader {
    max: usize,
    buf: Vec<u8>,
    head: Option<(usize, u16, Framing)>,
}

impl HttpReader {
    pub fn new(max: usize) -> Self {
        HttpReader {
            max,
            buf: Vec::new(),
            head: None,
        }
    }

    /// Adds bytes; `Ok(true)` once the answer is complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<bool, UpnpError> {
        if self.buf.len() + bytes.len() > self.max {
            return Err(UpnpError::Oversized {
                len: self.buf.len() + bytes.len(),
                max: self.max,
            });
        }
        let searched_from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(bytes);
        if self.head.is_none() {
            let window = &self.buf[searched_from..];
            let found = window.windows(4).any(|w| w == b"\r\n\r\n");
            if !found {
                if self.buf.len() > MAX_HEAD {
                    return Err(UpnpError::Http("head longer than 8 KiB"));
                }
                return Ok(false);
            }
            self.head = Some(parse_head(&self.buf)?);
        }
        let Some((head_len, _, framing)) = self.head else {
            return Ok(false);
        };
        Ok(match framing {
            Framing::Length(n) => self.buf.len() - head_len >= n,
            Framing::Chunked => {
                self.buf.ends_with(b"0\r\n\r\n") && dechunk(&self.buf[head_len..]).is_ok()
            }
            Framing::Close => false,
        })
    }

    /// The answer, from what arrived; `closed` when the connection ended
    /// (an answer framed by the close is complete only then).
    pub fn finish(&self, closed: bool) -> Result<HttpAnswer, UpnpError> {
        let Some((head_len, status, framing)) = self.head else {
            return Err(if self.buf.is_empty() {
                UpnpError::Http("no answer")
            } else {
                UpnpError::Truncated
            });
        };
        let rest = &self.buf[head_len..];
        let body = match framing {
            Framing::Length(n) if rest.len() >= n => rest[..n].to_vec(),
            Framing::Length(_) => return Err(UpnpError::Truncated),
            Framing::Chunked => dechunk(rest)?,
            Framing::Close if closed => rest.to_vec(),
            Framing::Close => return Err(UpnpError::Truncated),
        };
        Ok(HttpAnswer { status, body })
    }
}

/// The head's length, status and framing.
fn parse_head(buf: &[u8]) -> Result<(usize, u16, Framing), UpnpError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(UpnpError::Http("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpnpError::Http("more than 48 headers"))
        }
        Err(_) => return Err(UpnpError::Http("not an HTTP status line and headers")),
    };
    if head_len > MAX_HEAD {
        return Err(UpnpError::Http("head longer than 8 KiB"));
    }
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let framing = if header("transfer-encoding").is_some_and(|t| t.ends_with("chunked")) {
        Framing::Chunked
    } else if let Some(length) = header("content-length") {
        Framing::Length(
            length
                .parse()
                .map_err(|_| UpnpError::Http("bad Content-Length"))?,
        )
    } else {
        Framing::Close
    };
    Ok((head_len, status, framing))
}

/// A chunked body, decoded; bounded by its input.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, UpnpError> {
    let mut body = Vec::new();
    loop {
        let (start, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Err(UpnpError::Truncated),
            Err(_) => return Err(UpnpError::Http("bad chunk size")),
        };
        let size = usize::try_from(size).map_err(|_| UpnpError::Http("bad chunk size"))?;
        if size == 0 {
            return Ok(body);
        }
        let end = start
            .checked_add(size)
            .and_then(|e| e.checked_add(2))
            .ok_or(UpnpError::Http("bad chunk size"))?;
        if rest.len() < end {
            return Err(UpnpError::Truncated);
        }
        if &rest[end - 2..end] != b"\r\n" {
            return Err(UpnpError::Http("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&rest[start..end - 2]);
        rest = &rest[end..];
    }
}

/// Parses XML within the limits: depth checked first (roxmltree recurses
/// per level), DTDs refused (no entity expansion), nodes bounded.
fn parse_xml(body: &[u8]) -> Result<roxmltree::Document<'_>, UpnpError> {
    let text = std::str::from_utf8(body).map_err(|_| UpnpError::Xml("not UTF-8".into()))?;
    let text = text.trim_start_matches('\u{feff}');
    if depth_of(text.as_bytes()) > MAX_XML_DEPTH {
        return Err(UpnpError::XmlTooDeep);
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
    };
    roxmltree::Document::parse_with_options(text, options).map_err(|e| {
        // roxmltree's messages can quote the router's text (an entity or
        // tag name): cut short and with any address in it redacted, so a
        // router cannot put a raw address into the result.
        let words: String = e.to_string().chars().take(160).collect();
        UpnpError::Xml(punchscope_analysis::privacy::redact_text(&words))
    })
}

/// An upper bound of the element nesting: `<x` opens, `</` and `/>` close.
/// Comments or CDATA with `<` in them only make it larger (a refusal, never a miss).
fn depth_of(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'<' => match text.get(i + 1) {
                Some(b'/') => depth = depth.saturating_sub(1),
                Some(b'?' | b'!') => {}
                _ => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
            },
            b'>' if i > 0 && text[i - 1] == b'/' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A WAN connection service of the description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanService {
    /// `urn:schemas-upnp-org:service:WANIPConnection:2`, ...
    pub service_type: String,
    /// What is recorded: `WANIPConnection:2`, ...
    pub short: String,
    /// The version (1 or 2): 2 offers AddAnyPortMapping.
    pub version: u8,
    /// The controlURL as written (relative or not; see [`gateway_url`]).
    pub control_url: String,
}

/// What the probe needs of a device description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// URLBase (UPnP 1.0), when given.
    pub url_base: Option<String>,
    /// WAN connection services, best first: WANIPConnection:2, :1, WANPPPConnection:1.
    pub services: Vec<WanService>,
}

/// Reads a device description: its URLBase and WAN connection services.
pub fn parse_description(body: &[u8]) -> Result<Description, UpnpError> {
    let doc = parse_xml(body)?;
    let child_text = |node: roxmltree::Node, name: &str| {
        node.children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_VALUE)
            .map(str::to_string)
    };
    let url_base = child_text(doc.root_element(), "URLBase");
    let mut services = Vec::new();
    for node in doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "service")
    {
        let (Some(service_type), Some(control_url)) = (
            child_text(node, "serviceType"),
            child_text(node, "controlURL"),
        ) else {
            continue;
        };
        let Some(rest) = service_type.strip_prefix("urn:schemas-upnp-org:service:") else {
            continue;
        };
        let Some((name, version)) = rest.split_once(':') else {
            continue;
        };
        let Ok(version) = version.parse::<u8>() else {
            continue;
        };
        if !matches!(name, "WANIPConnection" | "WANPPPConnection") || version == 0 {
            continue;
        }
        services.push(WanService {
            short: format!("{name}:{version}"),
            service_type: service_type.clone(),
            version: version.min(2),
            control_url,
        });
    }
    if services.is_empty() {
        return Err(UpnpError::NoWanService);
    }
    // IP before PPP, newer before older.
    services.sort_by_key(|s| (!s.short.starts_with("WANIP"), std::cmp::Reverse(s.version)));
    Ok(Description { url_base, services })
}

/// A SOAP action of WANIPConnection / WANPPPConnection the probe sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    GetExternalIpAddress,
    /// IGDv1's: exactly this external port, or a fault.
    AddPortMapping {
        external_port: u16,
        internal_port: u16,
        internal_client: Ipv4Addr,
        lease_s: u32,
    },
    /// IGDv2's: this external port if free, else one the router picks.
    AddAnyPortMapping {
        external_port: u16,
        internal_port: u16,
        internal_client: Ipv4Addr,
        lease_s: u32,
    },
    GetSpecificPortMappingEntry {
        external_port: u16,
    },
    DeletePortMapping {
        external_port: u16,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::GetExternalIpAddress => "GetExternalIPAddress",
            Action::AddPortMapping { .. } => "AddPortMapping",
            Action::AddAnyPortMapping { .. } => "AddAnyPortMapping",
            Action::GetSpecificPortMappingEntry { .. } => "GetSpecificPortMappingEntry",
            Action::DeletePortMapping { .. } => "DeletePortMapping",
        }
    }

    /// The arguments, in the order the service description lists them.
    fn arguments(&self) -> Vec<(&'static str, String)> {
        let add = |external_port: u16, internal_port: u16, client: Ipv4Addr, lease: u32| {
            vec![
                ("NewRemoteHost", String::new()),
                ("NewExternalPort", external_port.to_string()),
                ("NewProtocol", "TCP".into()),
                ("NewInternalPort", internal_port.to_string()),
                ("NewInternalClient", client.to_string()),
                ("NewEnabled", "1".into()),
                ("NewPortMappingDescription", DESCRIPTION.into()),
                ("NewLeaseDuration", lease.to_string()),
            ]
        };
        match *self {
            Action::GetExternalIpAddress => Vec::new(),
            Action::AddPortMapping {
                external_port,
                internal_port,
                internal_client,
                lease_s,
            }
            | Action::AddAnyPortMapping {
                external_port,
                internal_port,
                internal_client,
                lease_s,
            } => add(external_port, internal_port, internal_client, lease_s),
            Action::GetSpecificPortMappingEntry { external_port }
            | Action::DeletePortMapping { external_port } => vec![
                ("NewRemoteHost", String::new()),
                ("NewExternalPort", external_port.to_string()),
                ("NewProtocol", "TCP".into()),
            ],
        }
    }
}

/// The whole HTTP POST of `action` to the service at `control`.
pub fn soap_request(control: &HttpTarget, service_type: &str, action: &Action) -> Vec<u8> {
    let name = action.name();
    let mut arguments = String::new();
    for (key, value) in action.arguments() {
        arguments.push_str(&format!("<{key}>{value}</{key}>"));
    }
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{name} xmlns:u=\"{service_type}\">{arguments}</u:{name}></s:Body></s:Envelope>\r\n"
    );
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{service_type}#{name}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        control.path,
        control.addr,
        body.len()
    )
    .into_bytes()
}

/// A SOAP answer: the action's out arguments, or the router's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoapAnswer {
    /// `<ActionResponse>`'s children, by name (values at most [`MAX_VALUE`] bytes).
    Done(BTreeMap<String, String>),
    /// A SOAP fault with its UPnPError code (None when it had none).
    Fault(Option<u16>),
}

/// Reads the answer to `action` from its HTTP status and body.
pub fn parse_soap_answer(answer: &HttpAnswer, action: &Action) -> Result<SoapAnswer, UpnpError> {
    if answer.status != 200 && answer.status != 500 {
        return Err(UpnpError::HttpStatus(answer.status));
    }
    let doc = parse_xml(&answer.body)?;
    let envelope = doc.root_element();
    if envelope.tag_name().name() != "Envelope" {
        return Err(UpnpError::Soap("no Envelope"));
    }
    let body = envelope
        .children()
        .find(|n| n.is_element() && n.tag_name().name() == "Body")
        .ok_or(UpnpError::Soap("no Body"))?;
    let first = body
        .children()
        .find(|n| n.is_element())
        .ok_or(UpnpError::Soap("empty Body"))?;
    if first.tag_name().name() == "Fault" {
        let code = first
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "errorCode")
            .and_then(|n| n.text())
            .and_then(|t| t.trim().parse().ok());
        return Ok(SoapAnswer::Fault(code));
    }
    if answer.status != 200 {
        return Err(UpnpError::Soap("status 500 without a Fault"));
    }
    if first.tag_name().name() != format!("{}Response", action.name()) {
        return Err(UpnpError::Soap("answer is for another action"));
    }
    let mut values = BTreeMap::new();
    for child in first.children().filter(|n| n.is_element()).take(32) {
        let text = child.text().unwrap_or("").trim();
        if text.len() > MAX_VALUE {
            return Err(UpnpError::Soap("value too long"));
        }
        values.insert(child.tag_name().name().to_string(), text.to_string());
    }
    Ok(SoapAnswer::Done(values))
}

/// The name of a UPnP error code (UPnP-gw-WANIPConnection-v2, section 2.4), lower case.
pub fn fault_name(code: Option<u16>) -> &'static str {
    match code {
        Some(401) => "invalid_action",
        Some(402) => "invalid_args",
        Some(501) => "action_failed",
        Some(606) => "action_not_authorized",
        Some(714) => "no_such_entry_in_array",
        Some(715) => "wildcard_not_permitted_in_src_ip",
        Some(716) => "wildcard_not_permitted_in_ext_port",
        Some(718) => "conflict_in_mapping_entry",
        Some(724) => "same_port_values_required",
        Some(725) => "only_permanent_leases_supported",
        Some(726) => "remote_host_only_supports_wildcard",
        Some(727) => "external_port_only_supports_wildcard",
        Some(728) => "no_port_maps_available",
        Some(729) => "conflict_with_other_mechanisms",
        Some(732) => "wildcard_not_permitted_in_int_port",
        Some(_) => "upnp_error",
        None => "soap_fault",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

    fn ssdp(location: &str) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: {location}\r\nSERVER: x\r\n\r\n").into_bytes()
    }

    #[test]
    fn an_ssdp_answer_gives_its_location_and_bad_ones_are_told_apart() {
        let a = parse_ssdp_answer(&ssdp("http://192.168.1.1:5000/rootDesc.xml")).unwrap();
        assert_eq!(a.location, "http://192.168.1.1:5000/rootDesc.xml");
        assert_eq!(
            parse_ssdp_answer(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n"),
            Err(UpnpError::SsdpNoLocation)
        );
        assert_eq!(
            parse_ssdp_answer(b"HTTP/1.1 404 Nope\r\n\r\n"),
            Err(UpnpError::SsdpStatus(404))
        );
        assert!(matches!(
            parse_ssdp_answer(b"NOTIFY * HTTP/1.1\r\n\r\n"),
            Err(UpnpError::SsdpMalformed(_))
        ));
        assert!(matches!(
            parse_ssdp_answer(b"HTTP/1.1 200 OK\r\nLOCATION: x"),
            Err(UpnpError::SsdpMalformed(_))
        ));
        assert!(matches!(
            parse_ssdp_answer(&[b'A'; MAX_SSDP + 1]),
            Err(UpnpError::Oversized { .. })
        ));
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            parse_ssdp_answer(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()),
            Err(UpnpError::SsdpMalformed(_))
        ));
        for len in 0..60 {
            let _ = parse_ssdp_answer(&ssdp("http://192.168.1.1/")[..len]);
        }
    }

    #[test]
    fn only_http_urls_on_the_gateways_address_are_followed() {
        let ok = gateway_url(
            "LOCATION",
            "http://192.168.1.1:5000/rootDesc.xml?x=1",
            None,
            GATEWAY,
        )
        .unwrap();
        assert_eq!(ok.addr, "192.168.1.1:5000".parse().unwrap());
        assert_eq!(ok.path, "/rootDesc.xml?x=1");
        let default_port = gateway_url("LOCATION", "http://192.168.1.1", None, GATEWAY).unwrap();
        assert_eq!(
            (default_port.addr.port(), default_port.path.as_str()),
            (80, "/")
        );
        // Relative control URLs resolve against the location, and are checked again.
        let control = gateway_url("controlURL", "/ctl/IPConn", Some(&ok), GATEWAY).unwrap();
        assert_eq!(
            (control.addr, control.path.as_str()),
            (ok.addr, "/ctl/IPConn")
        );
        let other_port = gateway_url(
            "controlURL",
            "http://192.168.1.1:49000/c",
            Some(&ok),
            GATEWAY,
        )
        .unwrap();
        assert_eq!(other_port.addr.port(), 49000);
        for (text, off) in [
            ("http://192.168.1.2:5000/d.xml", true),
            ("http://198.51.100.7/d.xml", true),
            ("http://router.lan/d.xml", true),
            ("http://[::1]/d.xml", true),
            ("http://3232235777/d.xml", false), // 192.168.1.1 as a number: allowed, it is the gateway
            ("https://192.168.1.1/d.xml", false),
            ("http://u:p@192.168.1.1/d.xml", false),
            ("file:///etc/passwd", false),
            ("not a url", false),
            ("http://192.168.1.1:0/", false),
        ] {
            match gateway_url("LOCATION", text, None, GATEWAY) {
                Err(UpnpError::OffGateway { .. }) => assert!(off, "{text}"),
                Err(UpnpError::Url { .. }) => assert!(!off, "{text}"),
                Ok(t) => assert_eq!(*t.addr.ip(), GATEWAY, "{text}"),
                Err(e) => panic!("{text}: {e}"),
            }
        }
        let escape = gateway_url("controlURL", "//198.51.100.7/ctl", Some(&ok), GATEWAY);
        assert_eq!(escape, Err(UpnpError::OffGateway { what: "controlURL" }));
        let long = format!("http://192.168.1.1/{}", "a".repeat(MAX_VALUE));
        assert!(gateway_url("LOCATION", &long, None, GATEWAY).is_err());
    }

    #[test]
    fn the_ssdp_search_retries_in_rounds_and_stops_at_the_first_usable_answer() {
        let t0 = Instant::now();
        let gw = SocketAddrV4::new(GATEWAY, SSDP_PORT);
        let s = Duration::from_secs;
        let mut search = SsdpSearch::new(gw, 3, s(1), Duration::from_millis(3500), t0);
        assert_eq!(search.poll_transmit(t0).len(), 2, "both targets at once");
        assert!(search.poll_transmit(t0).is_empty());
        assert_eq!(search.poll_timeout(), t0 + s(1));
        assert_eq!(search.poll_transmit(t0 + s(1)).len(), 2);
        search.handle_datagram(&ssdp("http://198.51.100.7/x.xml"), t0 + s(1));
        search.handle_datagram(b"garbage", t0 + s(1));
        assert!(!search.is_done(t0 + s(1)));
        assert_eq!(search.errors[0], UpnpError::OffGateway { what: "LOCATION" });
        search.handle_datagram(&ssdp("http://192.168.1.1:5000/d.xml"), t0 + s(2));
        assert!(search.is_done(t0 + s(2)));
        assert_eq!(search.found.as_ref().unwrap().path, "/d.xml");
        assert_eq!(search.sent, 4);
        assert!(
            search.poll_transmit(t0 + s(2)).is_empty(),
            "done: no more rounds"
        );

        let mut silent = SsdpSearch::new(gw, 3, s(1), Duration::from_millis(3500), t0);
        let mut now = t0;
        while !silent.is_done(now) {
            silent.poll_transmit(now);
            now = silent.poll_timeout();
        }
        assert_eq!((silent.sent, now), (6, t0 + Duration::from_millis(3500)));
        assert!(silent.found.is_none() && silent.first_answer.is_none());
    }

    fn head(extra: &str) -> String {
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n{extra}\r\n")
    }

    #[test]
    fn http_answers_are_framed_by_length_chunks_or_close_and_bounded() {
        let mut r = HttpReader::new(1024);
        assert!(!r.push(head("Content-Length: 5\r\n").as_bytes()).unwrap());
        assert!(!r.push(b"ab").unwrap());
        assert!(r.push(b"cde-extra").unwrap());
        assert_eq!(r.finish(false).unwrap().body, b"abcde");

        let mut r = HttpReader::new(1024);
        let chunked = format!(
            "{}3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            head("Transfer-Encoding: chunked\r\n")
        );
        for b in chunked.as_bytes() {
            r.push(&[*b]).unwrap();
        }
        assert_eq!(r.finish(false).unwrap().body, b"abcde");

        let mut r = HttpReader::new(1024);
        assert!(!r.push(format!("{}abc", head("")).as_bytes()).unwrap());
        assert_eq!(
            r.finish(false),
            Err(UpnpError::Truncated),
            "needs the close"
        );
        assert_eq!(r.finish(true).unwrap().body, b"abc");

        let mut r = HttpReader::new(64);
        assert!(matches!(
            r.push(format!("{}{}", head(""), "x".repeat(64)).as_bytes()),
            Err(UpnpError::Oversized { .. })
        ));
        let mut r = HttpReader::new(MAX_DESCRIPTION);
        assert!(
            r.push("X-Long: y\r\n".repeat(1000).as_bytes()).is_err(),
            "head over 8 KiB"
        );
        let mut r = HttpReader::new(1024);
        r.push(head("Content-Length: 10\r\n").as_bytes()).unwrap();
        r.push(b"short").unwrap();
        assert_eq!(r.finish(true), Err(UpnpError::Truncated));
        let mut r = HttpReader::new(1024);
        assert!(r.push(head("Content-Length: lots\r\n").as_bytes()).is_err());
        let mut r = HttpReader::new(1024);
        r.push(
            format!(
                "{}ffffffffffffffffff\r\nab\r\n0\r\n\r\n",
                head("Transfer-Encoding: chunked\r\n")
            )
            .as_bytes(),
        )
        .ok();
        assert!(r.finish(true).is_err());
        assert_eq!(
            HttpReader::new(10).finish(true),
            Err(UpnpError::Http("no answer"))
        );
    }

    pub(crate) const DESCRIPTION_XML: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>1</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType>
<serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>/ctl/PPP</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IP1</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>/ctl/IPConn</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

    #[test]
    fn the_description_gives_wan_services_best_first() {
        let d = parse_description(DESCRIPTION_XML.as_bytes()).unwrap();
        let shorts: Vec<&str> = d.services.iter().map(|s| s.short.as_str()).collect();
        assert_eq!(
            shorts,
            [
                "WANIPConnection:2",
                "WANIPConnection:1",
                "WANPPPConnection:1"
            ]
        );
        assert_eq!(d.services[0].control_url, "/ctl/IPConn");
        assert_eq!(d.services[0].version, 2);
        assert_eq!(d.url_base, None);
        let with_base = DESCRIPTION_XML.replace(
            "<specVersion>",
            "<URLBase>http://192.168.1.1:5000/</URLBase><specVersion>",
        );
        assert_eq!(
            parse_description(with_base.as_bytes())
                .unwrap()
                .url_base
                .as_deref(),
            Some("http://192.168.1.1:5000/")
        );
        let none = DESCRIPTION_XML.replace("WAN", "LAN");
        assert_eq!(
            parse_description(none.as_bytes()),
            Err(UpnpError::NoWanService)
        );
    }

    #[test]
    fn malicious_xml_is_refused_within_bounds() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><root><URLBase>&c;</URLBase></root>"#;
        assert!(matches!(
            parse_description(laughs.as_bytes()),
            Err(UpnpError::Xml(_))
        ));
        let external = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://198.51.100.7/x">]><root>&x;</root>"#;
        assert!(matches!(
            parse_description(external.as_bytes()),
            Err(UpnpError::Xml(_))
        ));
        let deep = format!("{}{}", "<a>".repeat(20_000), "</a>".repeat(20_000));
        assert_eq!(
            parse_description(deep.as_bytes()),
            Err(UpnpError::XmlTooDeep)
        );
        let wide = format!("<root>{}</root>", "<a/>".repeat(10_000));
        assert!(
            matches!(parse_description(wide.as_bytes()), Err(UpnpError::Xml(_))),
            "node limit"
        );
        assert!(parse_description(&[0xff, 0xfe, 0x00]).is_err());
        // The parser's message quotes the entity's name; no address gets through.
        let named = parse_description(b"<root>&a198.51.100.7;</root>")
            .unwrap_err()
            .to_string();
        assert!(
            punchscope_analysis::privacy::find_raw_ip(&named).is_none(),
            "{named}"
        );
        assert!(parse_description(b"<root><service>").is_err());
        for len in 0..DESCRIPTION_XML.len() {
            let _ = parse_description(&DESCRIPTION_XML.as_bytes()[..len]);
        }
    }

    /// The fuzz target's seed corpus, with its properties: every file parses
    /// without a panic and any URL accepted is on the gateway (the fuzzer
    /// itself runs in CI: `cd fuzz && cargo +nightly fuzz run upnp_answer`).
    #[test]
    fn the_fuzz_seed_corpus_holds_the_fuzz_targets_properties() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/upnp_answer");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            seen += 1;
            let mut search = SsdpSearch::new(
                SocketAddrV4::new(GATEWAY, SSDP_PORT),
                1,
                Duration::from_secs(1),
                Duration::from_secs(1),
                Instant::now(),
            );
            search.handle_datagram(&data, Instant::now());
            if let Some(found) = &search.found {
                assert_eq!(*found.addr.ip(), GATEWAY);
            }
            if let Ok(text) = std::str::from_utf8(&data) {
                let base = control();
                if let Ok(t) = gateway_url("controlURL", text, Some(&base), GATEWAY) {
                    assert_eq!(*t.addr.ip(), GATEWAY);
                }
            }
            let mut reader = HttpReader::new(MAX_DESCRIPTION);
            if reader.push(&data).is_ok() {
                let _ = reader.finish(true);
            }
            let _ = parse_description(&data);
            let answer = HttpAnswer {
                status: 200,
                body: data.clone(),
            };
            let _ = parse_soap_answer(&answer, &Action::GetExternalIpAddress);
        }
        assert!(seen >= 8, "the seed corpus is there: {seen} files");
        let ssdp = std::fs::read(format!("{dir}/ssdp_off_gateway")).unwrap();
        let mut search = SsdpSearch::new(
            SocketAddrV4::new(GATEWAY, SSDP_PORT),
            1,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Instant::now(),
        );
        search.handle_datagram(&ssdp, Instant::now());
        assert!(search.found.is_none(), "the off-gateway seed is refused");
    }

    fn control() -> HttpTarget {
        gateway_url(
            "controlURL",
            "http://192.168.1.1:5000/ctl/IPConn",
            None,
            GATEWAY,
        )
        .unwrap()
    }

    #[test]
    fn soap_requests_carry_the_action_and_its_arguments() {
        let add = Action::AddAnyPortMapping {
            external_port: 8333,
            internal_port: 8333,
            internal_client: Ipv4Addr::new(192, 168, 1, 20),
            lease_s: 120,
        };
        let st = "urn:schemas-upnp-org:service:WANIPConnection:2";
        let text = String::from_utf8(soap_request(&control(), st, &add)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.1.1:5000\r\n"));
        assert!(head.contains(&format!("SOAPAction: \"{st}#AddAnyPortMapping\"")));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        for part in [
            "<u:AddAnyPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\">",
            "<NewExternalPort>8333</NewExternalPort><NewProtocol>TCP</NewProtocol>",
            "<NewInternalClient>192.168.1.20</NewInternalClient>",
            "<NewLeaseDuration>120</NewLeaseDuration></u:AddAnyPortMapping>",
        ] {
            assert!(body.contains(part), "{part} in {body}");
        }
        // What we send is XML a router can parse.
        roxmltree::Document::parse(body.trim()).unwrap();
    }

    fn envelope(inner: &str) -> Vec<u8> {
        format!("<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>").into_bytes()
    }

    #[test]
    fn soap_answers_and_faults_are_read() {
        let ip = HttpAnswer {
            status: 200,
            body: envelope("<u:GetExternalIPAddressResponse xmlns:u=\"urn:x\"><NewExternalIPAddress>203.0.113.9</NewExternalIPAddress></u:GetExternalIPAddressResponse>"),
        };
        let SoapAnswer::Done(values) =
            parse_soap_answer(&ip, &Action::GetExternalIpAddress).unwrap()
        else {
            panic!()
        };
        assert_eq!(values["NewExternalIPAddress"], "203.0.113.9");
        let fault = HttpAnswer {
            status: 500,
            body: envelope("<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault>"),
        };
        let delete = Action::DeletePortMapping {
            external_port: 8333,
        };
        assert_eq!(
            parse_soap_answer(&fault, &delete),
            Ok(SoapAnswer::Fault(Some(718)))
        );
        assert_eq!(fault_name(Some(718)), "conflict_in_mapping_entry");
        let bare = HttpAnswer {
            status: 500,
            body: envelope("<s:Fault><faultcode>s:Client</faultcode></s:Fault>"),
        };
        assert_eq!(
            parse_soap_answer(&bare, &delete),
            Ok(SoapAnswer::Fault(None))
        );
        let wrong = HttpAnswer {
            status: 200,
            body: envelope("<u:AddPortMappingResponse xmlns:u=\"urn:x\"/>"),
        };
        assert_eq!(
            parse_soap_answer(&wrong, &delete),
            Err(UpnpError::Soap("answer is for another action"))
        );
        assert_eq!(
            parse_soap_answer(
                &HttpAnswer {
                    status: 404,
                    body: Vec::new()
                },
                &delete
            ),
            Err(UpnpError::HttpStatus(404))
        );
        let not_soap = HttpAnswer {
            status: 200,
            body: b"<html/>".to_vec(),
        };
        assert_eq!(
            parse_soap_answer(&not_soap, &delete),
            Err(UpnpError::Soap("no Envelope"))
        );
    }
}
