//! Privacy rules of results: IP addresses become network prefixes (IPv4 /24, IPv6 /32) before anything leaves the probe.
//!
//! Two tools, used on both sides:
//! - [`prefix_of`] and [`redact_text`] turn addresses (and any address
//!   literal inside free text, such as an error message) into their prefix,
//!   e.g. `203.0.113.2` into `203.0.113.0/24`. The probe applies them when it
//!   builds a result ([`crate::result::RunResult::sanitize`]).
//! - [`find_raw_ip`] is the strict check the collector runs on every string of
//!   an upload: it finds any IPv4 or IPv6 literal that is not such a prefix.
//!
//! Detection is deliberately eager: a version string with four numeric parts
//! (`1.2.3.4`) counts as an IPv4 address and is reduced too. Losing the last
//! part of such a string is a small price; letting an address through is not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a volunteer agrees to, in short; the full text is docs/privacy.md.
/// The probe prints this and asks for consent before a run is uploaded.
pub const PRIVACY_NOTICE: &str = "\
What punchscope sends and keeps

punchscope uploads one result per run to the collector you name. A result says
how your router treats TCP connections (its NAT type), how each hole-punching
attempt with other volunteers went, and whether a Bitcoin handshake worked over
it: ports, timings, outcomes, error messages, and the peer's Bitcoin software
version. It also holds your operating system, CPU architecture and the network
label you chose, if any.

It never holds a full IP address. Every address, yours and the servers', is cut
to its network part (the first three numbers of an IPv4 address, e.g.
203.0.113.0/24, or the first 32 bits of an IPv6 address, which name only the
internet provider) before the result is
written to disk, and the collector refuses any upload that still contains one.

The collector also sees the address you upload from. It keeps only that
address's network part and a keyed fingerprint of it (HMAC-SHA256 with a secret
key only the collector has), so that runs from the same network can be grouped
without storing who you are. The full address is never written to disk or logs.

To punch holes, your peer for the trials learns your public address and port
for each trial, and your NAT type, through the coordinator.

Unless you pass --no-portmap, the probe asks your router (PCP, NAT-PMP,
UPnP IGD) to open your node's port and one of its own for a moment, has the echo server
check that its own port is reachable at your address, deletes the mappings
before it goes on, and records what the router answered (codes, lifetimes,
ports, the external address's network part, reachable or not).

No name, e-mail, wallet, node identity or location is collected. Results are
kept for the research campaign and published only as aggregate statistics and
as anonymised datasets with the prefixes above. Ask the campaign operator to
delete a run by its run id (printed after each upload).
";

/// Prefix length kept of an IPv4 address.
pub const IPV4_PREFIX: u8 = 24;
/// Prefix length kept of an IPv6 address. Not the /48 or /56 a provider
/// assigns to one home, often for years (RIPE-690), which would identify
/// the household: a /32 is the smallest block a regional registry
/// allocates to a provider, so it names the provider only (docs/privacy.md).
pub const IPV6_PREFIX: u8 = 32;

/// The network prefix kept of an address, as text: `203.0.113.0/24`, `2001:db8::/32`.
pub fn prefix_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{}/{IPV4_PREFIX}", mask_v4(v4, IPV4_PREFIX)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => prefix_of(IpAddr::V4(v4)),
            None => format!("{}/{IPV6_PREFIX}", mask_v6(v6, IPV6_PREFIX)),
        },
    }
}

fn mask_v4(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    Ipv6Addr::from(bits & mask)
}

/// An address literal found in text: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundIp {
    /// Byte range of the literal in the text.
    pub start: usize,
    pub end: usize,
    pub ip: IpAddr,
    /// Whether it is written as an allowed prefix (`a.b.c.0/24` or shorter,
    /// `x:y::/32` or shorter, host bits zero; a longer IPv6 prefix such as a
    /// /48 names a household and counts as an address).
    pub is_prefix: bool,
}

/// The first IP address literal in `text` that is not an allowed prefix.
/// Offsets refer to `text` after [`normalize`] when it held look-alike
/// characters (full-width digits, dots or colons).
pub fn find_raw_ip(text: &str) -> Option<FoundIp> {
    let text = normalize(text);
    // Scanned in pieces cut where no literal can continue, so that the first
    // raw address ends the work (an upload full of them costs no more than
    // its first piece).
    let mut offset = 0;
    for piece in pieces(&text, 4096) {
        if let Some(mut found) = scan(piece).into_iter().find(|f| !f.is_prefix) {
            found.start += offset;
            found.end += offset;
            return Some(found);
        }
        offset += piece.len();
    }
    None
}

/// `text` cut into consecutive pieces of about `size` bytes, each cut at a
/// byte that no address literal, prefix suffix or token it touches can
/// contain (white space, quotes, commas, brackets of other kinds...).
fn pieces(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= bytes.len() {
            return None;
        }
        let start = at;
        let mut cut = (start + size).min(bytes.len());
        while cut < bytes.len()
            && (bytes[cut].is_ascii_alphanumeric()
                || matches!(
                    bytes[cut],
                    b'.' | b':' | b'/' | b'%' | b'-' | b'_' | b'[' | b']'
                )
                || !bytes[cut].is_ascii())
        {
            cut += 1;
        }
        // The cut byte itself is a separator: it goes with this piece.
        at = (cut + 1).min(bytes.len());
        Some(&text[start..at])
    })
}

/// Every IP address literal in `text`, prefixes included, in order.
pub fn all_ips(text: &str) -> Vec<FoundIp> {
    scan(&normalize(text))
}

/// Replaces every IP address literal in `text` that is not already an
/// allowed prefix by its prefix. Idempotent. Look-alike characters around
/// an address (full-width digits, dots, colons) come out as ASCII.
///
/// A replacement can join the text around it into a new literal (fuzzing
/// found `::1.1.3.13.774.4`, whose first pass leaves `::1.1.3.0/24...`,
/// an IPv6 literal with host bits), so passes repeat until none is left;
/// each pass only shortens or keeps literals, and a last resort removes
/// what is still left.
pub fn redact_text(text: &str) -> String {
    const MAX_PASSES: usize = 4;
    let mut out = redact_once(text);
    for _ in 1..MAX_PASSES {
        if find_raw_ip(&out).is_none() {
            return out;
        }
        out = redact_once(&out);
    }
    if find_raw_ip(&out).is_some() {
        out = scan(&out).into_iter().rev().filter(|f| !f.is_prefix).fold(
            out.clone(),
            |mut text, f| {
                text.replace_range(f.start..f.end, "(address)");
                text
            },
        );
    }
    out
}

fn redact_once(text: &str) -> String {
    let text = normalize(text);
    let found: Vec<FoundIp> = scan(&text).into_iter().filter(|f| !f.is_prefix).collect();
    if found.is_empty() {
        return text.into_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut at = 0;
    for f in found {
        out.push_str(&text[at..f.start]);
        out.push_str(&prefix_of(f.ip));
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

/// `text` with the characters that render like address syntax mapped to
/// ASCII: full-width digits and letters a-f/x, full-width and ideographic
/// full stops, full-width colons. Borrowed when there are none (the usual
/// case), so the scan stays one pass over plain text.
pub fn normalize(text: &str) -> std::borrow::Cow<'_, str> {
    fn ascii(c: char) -> Option<char> {
        match c {
            // FULLWIDTH DIGIT ZERO..NINE, LATIN LETTERS, COLON, FULL STOP.
            '\u{FF10}'..='\u{FF19}' | '\u{FF21}'..='\u{FF3A}' | '\u{FF41}'..='\u{FF5A}' => {
                char::from_u32(c as u32 - 0xFEE0)
            }
            '\u{FF1A}' => Some(':'),
            // FULLWIDTH FULL STOP, IDEOGRAPHIC FULL STOP, HALFWIDTH IDEOGRAPHIC FULL STOP.
            '\u{FF0E}' | '\u{3002}' | '\u{FF61}' => Some('.'),
            _ => None,
        }
    }
    if text.is_ascii() || !text.chars().any(|c| ascii(c).is_some()) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(|c| ascii(c).unwrap_or(c)).collect())
}

/// Applies [`redact_text`] to every string (and object key) in a JSON value.
pub fn redact_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if find_raw_ip(s).is_some() {
                *s = redact_text(s);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::Object(map) => {
            if map.keys().any(|k| find_raw_ip(k).is_some()) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(redact_text(&k), v);
                }
            }
            map.values_mut().for_each(redact_json);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The path (`pairings[0].trials[3].error`) of the first string or object key
/// in a JSON value that holds a raw IP address, if any.
pub fn find_raw_ip_in_json(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => find_raw_ip(s).is_some(),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let hit = walk(item, path);
                if !hit {
                    path.truncate(len);
                }
                hit
            }),
            Value::Object(map) => map.iter().any(|(k, v)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                if find_raw_ip(k).is_some() {
                    path.push_str("(a key)");
                    return true;
                }
                path.push_str(k);
                let hit = walk(v, path);
                if !hit {
                    path.truncate(len);
                }
                hit
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then(|| if path.is_empty() { ".".into() } else { path })
}

/// Every IPv4 and IPv6 literal in `text`, in order, without overlaps. Linear
/// in the length of `text`: each pass walks maximal runs of bytes once, and
/// overlaps between passes are resolved by merging sorted lists (an upload
/// of a million short address-like tokens must not cost a million squared).
fn scan(text: &str) -> Vec<FoundIp> {
    let bytes = text.as_bytes();
    // IPv6 first: its runs can contain an embedded IPv4 literal (::ffff:1.2.3.4).
    let v6: Vec<FoundIp> = runs(bytes, |b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        .into_iter()
        .filter_map(|(start, end)| v6_in_run(text, start, end))
        .collect();
    let mut found = without_overlaps(
        v6,
        runs(bytes, |b| b.is_ascii_digit() || b == b'.')
            .into_iter()
            .flat_map(|(start, end)| v4_in_run(text, start, end)),
    );
    // Other spellings of an IPv4 address that inet_aton() and browsers
    // accept: one 32-bit number (decimal or 0x-hex), and dotted quads with
    // 0x-hex parts. Tokens glued to letters, digits, `-`, `_`, `.` or `:`
    // are parts of something else (a UUID, a hash, a version).
    found = without_overlaps(
        found,
        runs(bytes, |b| b.is_ascii_alphanumeric() || b == b'.')
            .into_iter()
            .filter(|&(start, end)| standalone(bytes, start, end))
            .filter_map(|(start, end)| compact_v4(text, start, end)),
    );
    found
}

/// Merges `extra` (sorted by start) into `found` (sorted by start), dropping
/// each extra literal that overlaps one already found.
fn without_overlaps(found: Vec<FoundIp>, extra: impl Iterator<Item = FoundIp>) -> Vec<FoundIp> {
    let mut merged = Vec::with_capacity(found.len());
    let mut kept = found.into_iter().peekable();
    for candidate in extra {
        while let Some(f) = kept.next_if(|f| f.end <= candidate.start) {
            merged.push(f);
        }
        let overlaps = kept
            .peek()
            .is_some_and(|f| f.start < candidate.end && candidate.start < f.end)
            || merged
                .last()
                .is_some_and(|f| f.start < candidate.end && candidate.start < f.end);
        if !overlaps {
            merged.push(candidate);
        }
    }
    merged.extend(kept);
    merged.sort_by_key(|f| f.start);
    merged
}

/// Whether the run `start..end` stands alone: not glued to a word, a number
/// or address punctuation on either side (a `:port` after it is fine).
fn standalone(bytes: &[u8], start: usize, end: usize) -> bool {
    let glue = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    !(start > 0 && (glue(bytes[start - 1]) || bytes[start - 1] == b':'))
        && !(end < bytes.len() && glue(bytes[end]))
}

/// One number part of an inet_aton() address: decimal, or `0x` hex.
fn aton_part(part: &str) -> Option<u64> {
    if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 8 {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if part.is_empty() || part.len() > 10 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// `3405803783`, `0xcb007107` or `0xcb.0x0.0x71.0x7` as a raw address.
/// A lone number counts only from 2^24 up (smaller ones are counts and
/// codes, and the address they spell, 0.x.y.z, is nobody's); two- and
/// three-part decimal forms (`203.7405447`) are not flagged, since they are
/// indistinguishable from decimals and version numbers; with a `0x` part they are.
fn compact_v4(text: &str, start: usize, end: usize) -> Option<FoundIp> {
    let token = &text[start..end];
    // Quick refusals without allocating: a lone decimal needs 8 to 10 digits,
    // anything else a `0x`.
    let has_hex = token.contains("0x") || token.contains("0X");
    let lone_decimal = (8..=10).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_digit());
    if !has_hex && !lone_decimal {
        return None;
    }
    let parts: Vec<&str> = token.split('.').collect();
    let hex_part = parts
        .iter()
        .any(|p| p.starts_with("0x") || p.starts_with("0X"));
    let values: Vec<u64> = parts.iter().map(|p| aton_part(p)).collect::<Option<_>>()?;
    let ip = match values[..] {
        [a] if a <= u64::from(u32::MAX) && a >= 1 << 24 => a as u32,
        [a, b] if hex_part && a <= 255 && b < 1 << 24 => (a << 24 | b) as u32,
        [a, b, c] if hex_part && a <= 255 && b <= 255 && c < 1 << 16 => {
            (a << 24 | b << 16 | c) as u32
        }
        [a, b, c, d] if hex_part && [a, b, c, d].iter().all(|v| *v <= 255) => {
            (a << 24 | b << 16 | c << 8 | d) as u32
        }
        _ => return None,
    };
    Some(FoundIp {
        start,
        end,
        ip: IpAddr::V4(Ipv4Addr::from(ip)),
        is_prefix: false,
    })
}

/// Maximal runs of bytes satisfying `keep`, as byte ranges.
fn runs(bytes: &[u8], keep: impl Fn(u8) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if keep(bytes[i]) {
            let start = i;
            while i < bytes.len() && keep(bytes[i]) {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// A `/NN` right after `end`, if there is one: (length, end of the suffix).
fn prefix_suffix(text: &str, end: usize) -> Option<(u8, usize)> {
    let rest = text[end..].strip_prefix('/')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let len: u8 = rest[..digits].parse().ok()?;
    Some((len, end + 1 + digits))
}

/// Whether a `/NN` suffix ending at `end` ends there: its digits are not
/// the start of another literal (`7::1.1.3.0/24::1`), so a found address
/// may take them in without overlapping anything else found.
fn suffix_ends(text: &str, end: usize) -> bool {
    !matches!(text.as_bytes().get(end), Some(b) if b.is_ascii_alphanumeric() || matches!(b, b':' | b'.'))
}

/// IPv4 literals in a run of digits and dots: any four consecutive numeric
/// parts of one to three digits, each at most 255 (leading zeros included).
fn v4_in_run(text: &str, start: usize, end: usize) -> Vec<FoundIp> {
    let run = &text[start..end];
    // Most runs are plain numbers: no allocation for them.
    if run.bytes().filter(|b| *b == b'.').count() < 3 {
        return Vec::new();
    }
    // (offset in run, part)
    let mut parts = Vec::new();
    let mut offset = 0;
    for part in run.split('.') {
        parts.push((offset, part));
        offset += part.len() + 1;
    }
    let mut found = Vec::new();
    let mut i = 0;
    while i + 4 <= parts.len() {
        let window = &parts[i..i + 4];
        let octets: Option<Vec<u8>> = window
            .iter()
            .map(|(_, p)| {
                if p.is_empty() || p.len() > 3 {
                    None
                } else {
                    p.parse::<u16>().ok().and_then(|n| u8::try_from(n).ok())
                }
            })
            .collect();
        let Some(octets) = octets else {
            i += 1;
            continue;
        };
        let ip = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
        let lit_start = start + window[0].0;
        let lit_end = start + window[3].0 + window[3].1.len();
        // A prefix only when the literal is the whole run (nothing glued before it).
        let whole_tail = lit_end == end;
        let (is_prefix, lit_end) = match prefix_suffix(text, lit_end) {
            Some((len, suffix_end))
                if whole_tail && len <= IPV4_PREFIX && mask_v4(ip, len) == ip =>
            {
                (true, suffix_end)
            }
            // A longer prefix is an address: its suffix goes with it when cut
            // (unless the digits start another literal).
            Some((_, suffix_end)) if whole_tail && suffix_ends(text, suffix_end) => {
                (false, suffix_end)
            }
            _ => (false, lit_end),
        };
        found.push(FoundIp {
            start: lit_start,
            end: lit_end,
            ip: IpAddr::V4(ip),
            is_prefix,
        });
        i += 4;
    }
    found
}

/// An IPv6 literal in a run of hex digits, colons and dots: the run itself,
/// or the run without a trailing `.`, or without a trailing `:port`.
fn v6_in_run(text: &str, start: usize, end: usize) -> Option<FoundIp> {
    let run = &text[start..end];
    if run.bytes().filter(|b| *b == b':').count() < 2 {
        return None;
    }
    let trimmed = run.trim_end_matches('.');
    let without_port = trimmed.rfind(':').map_or(trimmed, |cut| &trimmed[..cut]);
    for candidate in [run, trimmed, without_port] {
        let Ok(ip) = candidate.parse::<Ipv6Addr>() else {
            continue;
        };
        // "::", "d::" and "::1" are not addresses of anyone (and "::" shows up
        // in Rust paths); an address that identifies a host has at least two
        // non-zero groups.
        let nonzero = ip.segments().iter().filter(|s| **s != 0).count();
        let mapped_v4 = ip.to_ipv4_mapped().is_some();
        if nonzero < 2 && !mapped_v4 {
            return None;
        }
        let lit_end = start + candidate.len();
        let (is_prefix, lit_end) = match prefix_suffix(text, lit_end) {
            Some((len, suffix_end))
                if lit_end == end && len <= IPV6_PREFIX && mask_v6(ip, len) == ip && !mapped_v4 =>
            {
                (true, suffix_end)
            }
            // A longer prefix (a household's /48 or /56) is an address: its
            // suffix goes with it when cut (unless the digits start another literal).
            Some((_, suffix_end)) if lit_end == end && suffix_ends(text, suffix_end) => {
                (false, suffix_end)
            }
            _ => (false, lit_end),
        };
        return Some(FoundIp {
            start,
            end: lit_end,
            ip: IpAddr::V6(ip),
            is_prefix,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_keep_24_and_32_bits() {
        assert_eq!(prefix_of("203.0.113.2".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(prefix_of("192.168.1.2".parse().unwrap()), "192.168.1.0/24");
        assert_eq!(
            prefix_of("2001:db8:1:2::1".parse().unwrap()),
            "2001:db8::/32"
        );
        assert_eq!(
            prefix_of("2a02:8071:5a2:1f00::7".parse().unwrap()),
            "2a02:8071::/32"
        );
        assert_eq!(
            prefix_of("::ffff:198.51.100.7".parse().unwrap()),
            "198.51.100.0/24"
        );
    }

    #[test]
    fn raw_addresses_are_found_in_free_text() {
        let raw = [
            "203.0.113.2",
            "connect to 203.0.113.2:40000 refused",
            "too many dial-back requests from 198.51.100.7: retry",
            "peer [2001:db8:1:2::1]:8333 reset",
            "2001:db8:0:0:0:0:0:1",
            "2001:db8::1:8333",
            "fe80::1%eth0",
            "::ffff:203.0.113.9",
            "010.001.002.003",
            "ends with 192.168.1.2.",
            "x1.2.3.4y",
            "203.0.113.0/25",
            "203.0.113.5/24",
            "2001:db8:1:2::/64",
            "3405803783",
            "dial 3405803783:8333",
            "0xcb007107",
            "0XCB007107",
            "0xcb.0x0.0x71.0x7",
            "0xcb.0.113.7",
            "203．0．113．7",
            "２０３.０.１１３.７",
            "203。0。113。7",
            "2001：db8：1：2：：1",
        ];
        for text in raw {
            assert!(find_raw_ip(text).is_some(), "missed an address in {text:?}");
        }
    }

    #[test]
    fn prefixes_and_ordinary_text_pass() {
        let clean = [
            "203.0.113.0/24",
            "192.168.1.0/24",
            "10.0.0.0/8",
            "2001:db8::/32",
            "2a02::/16",
            "/Satoshi:28.1.0/",
            "std::io::Error",
            "2026-05-01T12:34:56Z",
            "at 12:34:56.789",
            "version 0.1.0",
            "::",
            "d::",
            "",
            "3b241101-e2bb-4255-8caf-4136c566a962",
            "20000000-abcd-4255-8caf-413600000000",
            "session 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "took 16777215 ms",
            "elapsed 0.123456 s",
            "v1.2.3456",
            "0x1f is not an address",
            "0x",
            "99999999999",
            "203．0．113．0/24",
        ];
        for text in clean {
            assert_eq!(find_raw_ip(text), None, "false alarm in {text:?}");
        }
    }

    /// A household's /48 or /56 (what older probes kept) is an address now:
    /// found, and cut to its provider's /32.
    #[test]
    fn an_ipv6_prefix_longer_than_32_bits_is_cut_to_32() {
        for text in ["2a02:8071:5a2::/48", "2a02:8071:5a2:1f00::/56"] {
            let found = find_raw_ip(text).expect("a household prefix is an address");
            assert!(!found.is_prefix, "{text}");
            assert_eq!(redact_text(text), "2a02:8071::/32");
        }
        assert_eq!(redact_text("net 192.0.2.64/26"), "net 192.0.2.0/24");
        // The suffix's digits begin another literal: both are cut, none twice
        // (found by the privacy_scan fuzz target).
        let glued = redact_text("7::1.1.3.17::1..$");
        assert_eq!(find_raw_ip(&glued), None, "{glued}");
    }

    #[test]
    fn redaction_replaces_every_literal_and_is_idempotent() {
        let text = "from 203.0.113.2:40000 to [2001:db8:5:6::7]:8333 via 192.168.1.2";
        let once = redact_text(text);
        assert_eq!(
            once,
            "from 203.0.113.0/24:40000 to [2001:db8::/32]:8333 via 192.168.1.0/24"
        );
        assert_eq!(find_raw_ip(&once), None);
        assert_eq!(redact_text(&once), once);
        assert_eq!(
            redact_text("dial 0xcb007107 now"),
            "dial 203.0.113.0/24 now"
        );
        assert_eq!(
            redact_text("dial 3405803783 now"),
            "dial 203.0.113.0/24 now"
        );
        assert_eq!(redact_text("at 203．0．113．7"), "at 203.0.113.0/24");
    }

    #[test]
    fn a_long_text_is_checked_piece_by_piece_with_the_same_answer() {
        let clean = "203.0.113.0/24, 2001:db8::/32 ".repeat(2000);
        assert_eq!(find_raw_ip(&clean), None);
        let dirty = format!("{clean}then 198.51.100.7 and {clean}");
        let found = find_raw_ip(&dirty).expect("found");
        assert_eq!(&dirty[found.start..found.end], "198.51.100.7");
        let glued = format!("{}3405803783", "x".repeat(5000));
        assert_eq!(
            find_raw_ip(&glued),
            None,
            "glued to a word, across a piece boundary"
        );
        let pieces: String = pieces(&dirty, 64).collect();
        assert_eq!(pieces, dirty);
    }

    #[test]
    fn many_address_like_tokens_scan_in_linear_time() {
        // Each token is found; the old scan compared every hit with every
        // earlier one. Counted work, not time: the number of hits equals the
        // number of tokens, and a doubled input finds exactly double.
        let tokens = |n: usize| "1::1 1.2.3.4 ".repeat(n);
        assert_eq!(scan(&tokens(20_000)).len(), 40_000);
        assert_eq!(scan(&tokens(40_000)).len(), 80_000);
    }

    #[test]
    fn redaction_leaves_no_raw_address_even_when_a_prefix_joins_its_neighbours() {
        // Found by the privacy_scan fuzz target.
        let text = "::1.1.3.13.774.4";
        let redacted = redact_text(text);
        assert!(find_raw_ip(&redacted).is_none(), "{redacted}");
        assert_eq!(redact_text(&redacted), redacted, "idempotent");
    }
}
