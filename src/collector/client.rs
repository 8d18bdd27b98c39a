//! The collector's HTTP client: upload one result, read the export. The one
//! place that speaks to a collector, used by [`crate::upload`] (the probe's
//! spool), `punchscope report` (a collector URL as input) and `lab run`.
//!
//! The API it speaks is documented in `docs/collector.md`: `POST /v1/results`
//! (201 `{"status":"stored","run_id":...}`, 200 `already_stored`; 400, 409,
//! 413, 422 rejected; 408, 429, 5xx try later) and `GET /v1/results.jsonl`
//! with a bearer token.
//!
//! reqwest (blocking) over rustls, with the webpki roots and optionally one
//! more root CA from a PEM file (a campaign's own CA, a test CA). Proxies
//! come from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY`, as
//! reqwest reads them. Redirects are not followed: a collector answers
//! itself, and a redirected upload could land anywhere. A result counts as
//! stored only when the answer is the documented JSON naming the same run
//! id, so an HTML page or a 204 from a misconfigured proxy empties nothing.
//!
//! Blocking calls: use it from a plain thread or `spawn_blocking`, never on
//! an async executor's own threads.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;

/// What the client could not do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid collector URL {0:?}: give http://HOST:PORT or https://HOST[:PORT]")]
    BadUrl(String),
    #[error("cannot read the CA certificate {}: {cause}", path.display())]
    CaFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the CA file {} holds no usable PEM certificate: {cause}", path.display())]
    CaCertificate { path: PathBuf, cause: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
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
    /// 201 `{"status":"stored","run_id":<this run>}`: stored now.
    Stored,
    /// 200 `{"status":"already_stored","run_id":<this run>}`: it already had this run.
    AlreadyStored,
    /// 400, 409, 413, 422: the collector will never take it; the reason says why.
    Rejected(String),
    /// Transport errors, 408, 429, 5xx: try again later.
    Retry(String),
    /// Anything else (a 404 from a wrong URL, a redirect, a 2xx that is not
    /// the documented answer): retrying will not help.
    Fatal(String),
}

/// How to reach a collector: the bound on each step, and an extra root CA.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Bounds connecting, sending and each read of an answer (an export
    /// streams, so it has no deadline as a whole). Zero: 30 s.
    pub timeout: Duration,
    /// A PEM file of one or more CA certificates trusted besides the
    /// built-in roots (a campaign's own CA, a test CA).
    pub ca_file: Option<PathBuf>,
}

impl ClientOptions {
    pub fn with_timeout(timeout: Duration) -> ClientOptions {
        ClientOptions {
            timeout,
            ca_file: None,
        }
    }
}

/// A collector at one base URL (`http://host:port`, `https://host`).
#[derive(Debug, Clone)]
pub struct CollectorClient {
    base: String,
    http: Client,
}

/// `base` without a trailing `/` or `/v1/results`, if it is an http(s) URL with a host.
fn base_url(base: &str) -> Result<String, ClientError> {
    let trimmed = base.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1/results").unwrap_or(trimmed);
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    // A path after the host is fine (a collector behind a reverse proxy's prefix).
    if !host.is_some_and(|h| !h.split('/').next().unwrap_or_default().is_empty()) {
        return Err(ClientError::BadUrl(base.to_string()));
    }
    reqwest::Url::parse(trimmed).map_err(|_| ClientError::BadUrl(base.to_string()))?;
    Ok(trimmed.to_string())
}

fn root_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let pem = std::fs::read(path).map_err(|cause| ClientError::CaFile {
        path: path.to_path_buf(),
        cause,
    })?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::CaCertificate {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(ClientError::CaCertificate {
            path: path.to_path_buf(),
            cause: "no `BEGIN CERTIFICATE` block".into(),
        });
    }
    Ok(certificates)
}

impl CollectorClient {
    /// A client of the collector at `base` with the built-in roots only.
    /// A base that already ends in `/v1/results` is accepted too.
    pub fn new(base: &str, timeout: Duration) -> Result<CollectorClient, ClientError> {
        Self::with_options(base, &ClientOptions::with_timeout(timeout))
    }

    /// A client of the collector at `base`, as `options` say.
    pub fn with_options(
        base: &str,
        options: &ClientOptions,
    ) -> Result<CollectorClient, ClientError> {
        let base = base_url(base)?;
        let timeout = if options.timeout.is_zero() {
            Duration::from_secs(30)
        } else {
            options.timeout
        };
        let mut builder = Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("punchscope/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            for certificate in root_certificates(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(CollectorClient { base, http })
    }

    /// Where results are posted.
    pub fn results_url(&self) -> String {
        format!("{}/v1/results", self.base)
    }

    /// Where the export is read.
    pub fn export_url(&self) -> String {
        format!("{}/v1/results.jsonl", self.base)
    }

    /// Posts one result (a RunResult document whose run id is `run_id`) within `deadline`.
    pub fn upload(&self, body: &str, run_id: &str, deadline: Duration) -> UploadAnswer {
        let url = self.results_url();
        let answer = self
            .http
            .post(&url)
            .timeout(deadline)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send();
        let response = match answer {
            Ok(response) => response,
            Err(e) => return UploadAnswer::Retry(format!("cannot reach {url}: {}", chain(&e))),
        };
        let status = response.status();
        let text = body_text(response);
        classify_answer(status, &text, run_id, &url)
    }

    /// Opens the JSONL export (one stored result per line) with the export token.
    pub fn export(&self, token: &str) -> Result<Box<dyn Read + Send + Sync>, ClientError> {
        let url = self.export_url();
        let response = self.http.get(&url).bearer_auth(token).send().map_err(|e| {
            ClientError::Unreachable {
                url: url.clone(),
                cause: chain(&e),
            }
        })?;
        if response.status() == StatusCode::OK {
            return Ok(Box::new(response));
        }
        Err(ClientError::Status {
            url,
            code: response.status().as_u16(),
            body: body_text(response).chars().take(300).collect(),
        })
    }
}

/// What an answer to `POST /v1/results` means for the result with `run_id`.
fn classify_answer(status: StatusCode, text: &str, run_id: &str, url: &str) -> UploadAnswer {
    let json = serde_json::from_str::<serde_json::Value>(text).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let code = status.as_u16();
    match code {
        200 | 201 => {
            let expected = if code == 201 { "stored" } else { "already_stored" };
            let named = field("run_id");
            if field("status").as_deref() == Some(expected) && named.as_deref() == Some(run_id) {
                if code == 201 {
                    UploadAnswer::Stored
                } else {
                    UploadAnswer::AlreadyStored
                }
            } else {
                let shown: String = text.chars().take(200).collect();
                UploadAnswer::Fatal(format!(
                    "HTTP {code} from {url} without the collector's answer for run {run_id} (got {shown:?}): is the URL a punchscope collector?"
                ))
            }
        }
        400 | 409 | 413 | 422 => {
            let reason = field("error").unwrap_or_else(|| text.chars().take(2000).collect());
            UploadAnswer::Rejected(format!("HTTP {code}: {reason}"))
        }
        408 | 429 | 500..=599 => {
            let reason = field("error").unwrap_or_else(|| text.chars().take(300).collect());
            UploadAnswer::Retry(format!("HTTP {code}: {reason}"))
        }
        300..=399 => UploadAnswer::Fatal(format!(
            "HTTP {code} from {url}: the collector redirects, which uploads do not follow; give the URL it redirects to"
        )),
        _ => {
            let reason = field("error").unwrap_or_else(|| text.chars().take(300).collect());
            UploadAnswer::Fatal(format!(
                "HTTP {code} from {url}: {reason} (is the collector URL right?)"
            ))
        }
    }
}

/// The first 8 KiB of an answer's body, as text.
fn body_text(response: Response) -> String {
    let mut text = String::new();
    let _ = response.take(8 * 1024).read_to_string(&mut text);
    text
}

/// An error with its causes, so that "certificate not trusted" is not lost
/// behind "error sending request".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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

    #[test]
    fn only_the_documented_answer_naming_this_run_counts_as_stored() {
        let id = "8e3c0b52-3f7a-4c1e-9b7d-2a6f1e0c9d41";
        let url = "http://c/v1/results";
        let stored = format!("{{\"status\":\"stored\",\"run_id\":\"{id}\"}}");
        let again = format!("{{\"status\":\"already_stored\",\"run_id\":\"{id}\"}}");
        let at = |code: u16, body: &str| {
            classify_answer(StatusCode::from_u16(code).unwrap(), body, id, url)
        };
        assert_eq!(at(201, &stored), UploadAnswer::Stored);
        assert_eq!(at(200, &again), UploadAnswer::AlreadyStored);
        let other_run = stored.replace("9d41", "0000");
        for (code, body) in [
            (201, other_run.as_str()),
            (200, "<html>welcome</html>"),
            (204, ""),
            (201, again.as_str()),
            (200, stored.as_str()),
        ] {
            assert!(
                matches!(at(code, body), UploadAnswer::Fatal(_)),
                "{code} {body}"
            );
        }
        assert_eq!(
            at(409, "{\"error\":\"run stored with other content\"}"),
            UploadAnswer::Rejected("HTTP 409: run stored with other content".into())
        );
        assert!(matches!(
            at(400, "{\"error\":\"x\"}"),
            UploadAnswer::Rejected(_)
        ));
        assert!(matches!(
            at(503, "{\"error\":\"x\"}"),
            UploadAnswer::Retry(_)
        ));
        assert!(matches!(at(302, ""), UploadAnswer::Fatal(m) if m.contains("redirect")));
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let options = ClientOptions {
            timeout: Duration::from_secs(1),
            ca_file: Some(path),
        };
        let e = CollectorClient::with_options("https://c.example", &options).unwrap_err();
        assert!(matches!(e, ClientError::CaCertificate { .. }), "{e}");
        let options = ClientOptions {
            ca_file: Some(dir.path().join("missing.pem")),
            ..options
        };
        let e = CollectorClient::with_options("https://c.example", &options).unwrap_err();
        assert!(matches!(e, ClientError::CaFile { .. }), "{e}");
    }
}
