//! The results collector (`serve collector`): an HTTP server that validates, deduplicates and durably stores run results.
//!
//! Endpoints:
//! - `POST /v1/results`: one [`RunResult`] as JSON. 201 when stored now, 200
//!   when its run id was already stored (nothing changes), 400 with
//!   `{"error": ...}` for anything invalid (malformed JSON, wrong types,
//!   unknown schema version, a raw IP address anywhere), 413 over the size
//!   limit. A 2xx is sent only after the result is durably committed.
//! - `GET /v1/results.jsonl`: every stored result, one [`CollectedResult`]
//!   per line, behind `Authorization: Bearer <export token>`.
//! - `GET /healthz`: 200 `ok`.
//! - `GET /metrics`: [`CollectorMetrics`] in the Prometheus text format.
//!
//! [`run`] serves plain HTTP; [`run_tls`] serves HTTPS itself (rustls, see
//! [`super::tls`]).
//!
//! Privacy: the uploader's address is read from the connection, turned into
//! its prefix and a keyed hash ([`SourceTagger`]), and then dropped: it is
//! never stored, logged or put in an error message.
//!
//! Store calls run on one dedicated thread that takes every queued insert at
//! once and commits them together (group commit), so one fsync serves many
//! concurrent uploads. Bodies, concurrency and request time are bounded.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use punchscope_analysis::result::{RunResult, MAX_RESULT_BYTES};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::collector::{Inserted, NewResult, ResultStore, SourceTagger, StoreError, StoredRow};

/// Tunables of the collector. `Default` suits a public deployment, except
/// for the secrets, which the caller must set.
#[derive(Clone)]
pub struct CollectorConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait their turn.
    pub max_concurrent_requests: usize,
    /// Longest a request may take (reading the body included); then 408.
    pub request_timeout: Duration,
    /// Results queued for the store at most; uploads wait when it is full.
    pub queue_len: usize,
    /// Results committed together at most.
    pub max_batch: usize,
    /// Results per export page (one store call each).
    pub export_page: usize,
    /// The bearer token that unlocks the export; `None` disables the export.
    pub export_token: Option<String>,
    /// Groups uploaders without identifying them.
    pub tagger: SourceTagger,
    /// Counters of `/metrics`, shared with whoever else wants to read them.
    pub metrics: Arc<CollectorMetrics>,
}

/// What the collector counts for `/metrics`: every answer to an upload, by
/// what it meant. Rejections are keyed by reason (`invalid` 400, `conflict`
/// 409, `too_large` 413, `rate_limited` 429, `unavailable` 503, else
/// `http_<code>`), so limits added later are counted without touching this.
#[derive(Debug, Default)]
pub struct CollectorMetrics {
    stored: AtomicU64,
    already_stored: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
}

impl CollectorMetrics {
    /// Counts one answer to `POST /v1/results`.
    pub fn count_upload(&self, status: StatusCode) {
        match status.as_u16() {
            201 => {
                self.stored.fetch_add(1, Ordering::Relaxed);
            }
            200 => {
                self.already_stored.fetch_add(1, Ordering::Relaxed);
            }
            code => {
                let reason = match code {
                    400 => "invalid".to_string(),
                    408 => "timeout".to_string(),
                    409 => "conflict".to_string(),
                    413 => "too_large".to_string(),
                    429 => "rate_limited".to_string(),
                    503 => "unavailable".to_string(),
                    other => format!("http_{other}"),
                };
                *self
                    .refused
                    .lock()
                    .expect("metrics lock")
                    .entry(reason)
                    .or_default() += 1;
            }
        }
    }

    /// Results stored since the collector started.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        use super::metrics::{MetricKind, MetricsText};
        let refused = self.refused.lock().expect("metrics lock").clone();
        let rows: Vec<([(&str, &str); 1], u64)> = refused
            .iter()
            .map(|(reason, n)| ([("reason", reason.as_str())], *n))
            .collect();
        let rate_limited = refused.get("rate_limited").copied().unwrap_or(0);
        MetricsText::new()
            .single(
                "punchscope_collector_results_stored_total",
                MetricKind::Counter,
                "Results stored (201).",
                self.stored(),
            )
            .single(
                "punchscope_collector_results_already_stored_total",
                MetricKind::Counter,
                "Uploads of a run already stored (200).",
                self.already_stored.load(Ordering::Relaxed),
            )
            .family(
                "punchscope_collector_uploads_refused_total",
                MetricKind::Counter,
                "Uploads refused, by reason.",
                &rows.iter().map(|(l, n)| (&l[..], *n)).collect::<Vec<_>>(),
            )
            .single(
                "punchscope_collector_rate_limited_total",
                MetricKind::Counter,
                "Uploads refused by a rate limit (429).",
                rate_limited,
            )
            .finish()
    }
}

impl CollectorConfig {
    /// Default limits with the given grouping key and export token.
    pub fn new(key: &[u8], export_token: Option<String>) -> Self {
        CollectorConfig {
            max_body_bytes: MAX_RESULT_BYTES,
            max_concurrent_requests: 256,
            request_timeout: Duration::from_secs(30),
            queue_len: 4096,
            max_batch: 512,
            export_page: 500,
            export_token,
            tagger: SourceTagger::new(key),
            metrics: Arc::default(),
        }
    }
}

/// What stops the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("cannot serve HTTP: {0}")]
    Serve(io::Error),
    #[error("the storage thread could not be started: {0}")]
    Thread(io::Error),
}

/// Serves on `listener` until `shutdown` completes, then finishes running
/// requests, lets the store commit what it was given, and returns.
pub async fn run(
    listener: TcpListener,
    config: CollectorConfig,
    store: Box<dyn ResultStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    let (app, writer) = start(config, store)?;
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    finish(writer).await;
    served.map_err(CollectorError::Serve)
}

/// As [`run`], over TLS: the collector terminates HTTPS itself with `tls`
/// (see [`super::tls::load_server_config`]).
pub async fn run_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: CollectorConfig,
    store: Box<dyn ResultStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    let (app, writer) = start(config, store)?;
    let served = super::tls::serve(listener, tls, app, shutdown).await;
    finish(writer).await;
    served.map_err(CollectorError::Serve)
}

/// The storage thread and the router that feeds it.
fn start(
    config: CollectorConfig,
    store: Box<dyn ResultStore>,
) -> Result<(Router, std::thread::JoinHandle<()>), CollectorError> {
    let (tx, rx) = mpsc::channel(config.queue_len.max(1));
    let max_batch = config.max_batch.max(1);
    let writer = std::thread::Builder::new()
        .name("collector-store".into())
        .spawn(move || store_thread(store, rx, max_batch))
        .map_err(CollectorError::Thread)?;
    Ok((router(config, tx), writer))
}

/// Every sender lived in the router, now dropped: the thread drains and ends.
async fn finish(writer: std::thread::JoinHandle<()>) {
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
}

struct AppState {
    config: CollectorConfig,
    store: mpsc::Sender<StoreRequest>,
    /// SHA-256 of the export token, compared in constant time.
    token_digest: Option<[u8; 32]>,
}

fn router(config: CollectorConfig, store: mpsc::Sender<StoreRequest>) -> Router {
    let token_digest = config
        .export_token
        .as_ref()
        .map(|t| Sha256::digest(t.as_bytes()).into());
    let limits = tower::ServiceBuilder::new()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.max_concurrent_requests.max(1),
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ));
    let metrics = config.metrics.clone();
    let count_uploads = axum::middleware::map_response(move |response: Response| {
        let metrics = metrics.clone();
        async move {
            metrics.count_upload(response.status());
            response
        }
    });
    let metrics = config.metrics.clone();
    let state = Arc::new(AppState {
        config,
        store,
        token_digest,
    });
    Router::new()
        .route("/v1/results", post(post_result).layer(count_uploads))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { super::metrics::response(metrics.render()) }
            }),
        )
        .route("/v1/results.jsonl", get(export))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: use POST /v1/results, GET /v1/results.jsonl, GET /healthz or GET /metrics",
            )
        })
        .layer(limits)
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, Json(body)).into_response()
}

async fn post_result(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let max = state.config.max_body_bytes;
    let body = match read_limited(body, max).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "result larger than {max} bytes: split the run or raise the collector's limit"
                ),
            )
        }
        Err(BodyError::Read(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text");
    };
    let result = match RunResult::from_json(text) {
        Ok(result) => result,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (source_net, source_group) = state.config.tagger.tag(peer.ip());
    let run_id = result.run_id.to_string();
    let new = NewResult {
        run_id: run_id.clone(),
        schema_version: result.schema_version,
        received_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        source_net,
        source_group,
        body: result.to_json(),
    };
    let (reply, answer) = oneshot::channel();
    if state
        .store
        .send(StoreRequest::Insert(new, reply))
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage is shutting down: retry later",
        );
    }
    match answer.await {
        Ok(Ok(Inserted::New)) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "status": "stored", "run_id": run_id })),
        )
            .into_response(),
        Ok(Ok(Inserted::Duplicate)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "already_stored", "run_id": run_id })),
        )
            .into_response(),
        Ok(Err(e)) => {
            eprintln!("collector: storing run {run_id} failed: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the result could not be stored: retry later",
            )
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage stopped: retry later",
        ),
    }
}

async fn export(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(expected) = state.token_digest else {
        return error(
            StatusCode::FORBIDDEN,
            "export is disabled: start the collector with --export-token-file",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "export needs `Authorization: Bearer <token>`",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    };
    let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    let differs = given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differs != 0 {
        return error(StatusCode::FORBIDDEN, "wrong export token");
    }
    let page = state.config.export_page.max(1);
    let store = state.store.clone();
    // Pages are fetched as the client reads: memory stays bounded by one page.
    let lines = futures_util::stream::unfold(Some(0i64), move |after| {
        let store = store.clone();
        async move {
            let after = after?;
            let (reply, answer) = oneshot::channel();
            let rows = match store
                .send(StoreRequest::Export {
                    after,
                    limit: page,
                    reply,
                })
                .await
            {
                Ok(()) => answer.await.unwrap_or(Err(StoreError::Stopped)),
                Err(_) => Err(StoreError::Stopped),
            };
            match rows {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(|r| r.seq);
                    let mut chunk = String::new();
                    for row in &rows {
                        chunk.push_str(&export_line(row));
                    }
                    Some((Ok::<_, io::Error>(chunk), next))
                }
                Err(e) => {
                    eprintln!("collector: export failed: {e}");
                    Some((Err(io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// One export line: the stored body verbatim inside a
/// [`punchscope_analysis::result::CollectedResult`] envelope.
fn export_line(row: &StoredRow) -> String {
    let r = &row.result;
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    format!(
        "{{\"received_at\":{},\"source_net\":{},\"source_group\":{},\"result\":{}}}\n",
        quote(&r.received_at),
        quote(&r.source_net),
        quote(&r.source_group),
        r.body
    )
}

enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads at most `max` bytes of body. A larger body is still read (and
/// dropped) up to a few times the limit, so that the client, still sending,
/// gets to read the 413 instead of a broken connection.
async fn read_limited(body: Body, max: usize) -> Result<Bytes, BodyError> {
    use futures_util::StreamExt;
    let drain_limit = max.saturating_mul(8).max(1024 * 1024);
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        seen = seen.saturating_add(chunk.len());
        if seen > drain_limit {
            return Err(BodyError::TooLarge);
        }
        if seen <= max {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > max {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(buf))
}

enum StoreRequest {
    Insert(NewResult, oneshot::Sender<Result<Inserted, StoreError>>),
    Export {
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<StoredRow>, StoreError>>,
    },
}

/// Owns the store: takes every queued insert (up to `max_batch`), commits
/// them in one transaction, then answers each. Ends when every sender is gone.
fn store_thread(
    mut store: Box<dyn ResultStore>,
    mut rx: mpsc::Receiver<StoreRequest>,
    max_batch: usize,
) {
    let mut pending: Option<StoreRequest> = None;
    loop {
        let Some(first) = pending.take().or_else(|| rx.blocking_recv()) else {
            return;
        };
        match first {
            StoreRequest::Export {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(store.export(after, limit));
            }
            StoreRequest::Insert(row, reply) => {
                let mut rows = vec![row];
                let mut replies = vec![reply];
                while rows.len() < max_batch {
                    match rx.try_recv() {
                        Ok(StoreRequest::Insert(row, reply)) => {
                            rows.push(row);
                            replies.push(reply);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let started = Instant::now();
                match store.insert_if_absent(&rows) {
                    Ok(outcomes) => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        eprintln!(
                            "collector: commit of {} results failed after {:?}: {message}",
                            rows.len(),
                            started.elapsed()
                        );
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::Sqlite(
                                rusqlite::Error::InvalidParameterName(message.clone()),
                            )));
                        }
                    }
                }
            }
        }
    }
}
