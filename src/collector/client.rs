//! The collector's HTTP client: upload one result, read the export. The one
//! place that speaks to a collector, used by [`crate::upload`] (the probe's
//! spool), `punchscope report` (a collector URL as input) and `lab run`.
//!
//! The API it speaks is documented in `docs/collector.md`: `POST /v1/results`
//! (201 stored, 200 already stored, 400/413/422 rejected, 408/429/5xx try
//! later) and `GET /v1/results.jsonl` with a bearer token.

use std::io::Read;
use std::time::Duration;

/// What the client could not do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid collector URL {0:?}: give http://HOST:PORT or https://HOST[:PORT]")]
    BadUrl(String),
    #[error("the collector at {url} answered {code}: {body}")]
    Status {
        url: String,
        code: u16,
        body: String,
    },
    #[error("cannot reach the collector at {url}: {cause}")]
    Unreachable { url: String, cause: String },
}

/// The collector's answer to one upload, classified by what the uploader should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadAnswer {
    /// 201: stored now.
    Stored,
    /// 200 (or another 2xx): it already had this run id.
    AlreadyStored,
    /// 400, 413, 422: the collector will never take it; the reason says why.
    Rejected(String),
    /// Transport errors, 408, 429, 5xx: try again later.
    Retry(String),
    /// Anything else (a 404 from a wrong URL, a redirect): retrying will not help.
    Fatal(String),
}

/// A collector at one base URL (`http://host:port`, `https://host`).
#[derive(Debug, Clone)]
pub struct CollectorClient {
    base: String,
    agent: ureq::Agent,
}

impl CollectorClient {
    /// A client of the collector at `base`; `timeout` bounds connecting and
    /// each read (an export streams, so it has no deadline as a whole).
    /// A base that already ends in `/v1/results` is accepted too.
    pub fn new(base: &str, timeout: Duration) -> Result<CollectorClient, ClientError> {
        let trimmed = base.trim().trim_end_matches('/');
        let trimmed = trimmed.strip_suffix("/v1/results").unwrap_or(trimmed);
        let host = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"));
        // A path after the host is fine (a collector behind a reverse proxy's prefix).
        if !host.is_some_and(|h| !h.split('/').next().unwrap_or_default().is_empty()) {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            .redirects(0)
            .build();
        Ok(CollectorClient {
            base: trimmed.to_string(),
            agent,
        })
    }

    /// Where results are posted.
    pub fn results_url(&self) -> String {
        format!("{}/v1/results", self.base)
    }

    /// Where the export is read.
    pub fn export_url(&self) -> String {
        format!("{}/v1/results.jsonl", self.base)
    }

    /// Posts one result (a RunResult document) within `deadline`.
    pub fn upload(&self, body: &str, deadline: Duration) -> UploadAnswer {
        let url = self.results_url();
        let answer = self
            .agent
            .post(&url)
            .timeout(deadline)
            .set("Content-Type", "application/json")
            .send_string(body);
        match answer {
            Ok(response) => match response.status() {
                201 => UploadAnswer::Stored,
                200..=299 => UploadAnswer::AlreadyStored,
                other => UploadAnswer::Fatal(format!(
                    "unexpected HTTP status {other} from {url} (is the collector URL right?)"
                )),
            },
            Err(ureq::Error::Status(code, response)) => {
                let text = error_text(response);
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(text);
                match code {
                    400 | 413 | 422 => UploadAnswer::Rejected(format!("HTTP {code}: {message}")),
                    408 | 429 | 500..=599 => UploadAnswer::Retry(format!("HTTP {code}: {message}")),
                    _ => UploadAnswer::Fatal(format!(
                        "HTTP {code} from {url}: {message} (is the collector URL right?)"
                    )),
                }
            }
            Err(ureq::Error::Transport(t)) => {
                UploadAnswer::Retry(format!("cannot reach {url}: {t}"))
            }
        }
    }

    /// Opens the JSONL export (one stored result per line) with the export token.
    pub fn export(&self, token: &str) -> Result<Box<dyn Read + Send + Sync>, ClientError> {
        let url = self.export_url();
        match self
            .agent
            .get(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .call()
        {
            Ok(response) => Ok(response.into_reader()),
            Err(ureq::Error::Status(code, response)) => Err(ClientError::Status {
                url,
                code,
                body: error_text(response).chars().take(300).collect(),
            }),
            Err(ureq::Error::Transport(t)) => Err(ClientError::Unreachable {
                url,
                cause: t.to_string(),
            }),
        }
    }
}

/// The first 2,000 characters of an error answer's body.
fn error_text(response: ureq::Response) -> String {
    let mut text = String::new();
    let _ = response
        .into_reader()
        .take(8 * 1024)
        .read_to_string(&mut text);
    text.chars().take(2000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_get_the_api_paths() {
        let t = Duration::from_secs(1);
        let c = CollectorClient::new("http://127.0.0.1:8080/", t).unwrap();
        assert_eq!(c.results_url(), "http://127.0.0.1:8080/v1/results");
        assert_eq!(c.export_url(), "http://127.0.0.1:8080/v1/results.jsonl");
        let c = CollectorClient::new("https://collector.example/v1/results", t).unwrap();
        assert_eq!(c.results_url(), "https://collector.example/v1/results");
        let c = CollectorClient::new("https://example.org/punchscope/", t).unwrap();
        assert_eq!(c.results_url(), "https://example.org/punchscope/v1/results");
        for bad in ["collector.example", "http://", "https:///x", "ftp://x"] {
            assert!(
                matches!(CollectorClient::new(bad, t), Err(ClientError::BadUrl(_))),
                "{bad} accepted"
            );
        }
    }
}
