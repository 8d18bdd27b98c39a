//! The results collector (`serve collector`): an HTTP server that validates, deduplicates and durably stores run results.
//!
//! Endpoints:
//! - `POST /v1/results`: one [`RunResult`] as JSON. 201 when stored now, 200
//!   when the same result was already stored (nothing changes), 409 when
//!   another result with its run id is stored, 400 with `{"error": ...}` for
//!   anything invalid (malformed JSON, wrong types, unknown schema version, a
//!   raw IP address anywhere), 413 over the size limit, 429 over the
//!   source's rate or storage quota, 507 when the disk is full, 503 when
//!   busy. A 2xx is sent only after the result is durably committed.
//! - `GET /v1/results.jsonl`: every stored result, one [`CollectedResult`]
//!   per line, behind `Authorization: Bearer <export token>`.
//! - `GET /healthz`: 200 `ok`, outside every request limit.
//! - `GET /metrics`: [`CollectorMetrics`] in the Prometheus text format,
//!   outside every request limit too.
//!
//! [`run`] serves plain HTTP; [`run_tls`] serves HTTPS itself (rustls, see
//! [`super::tls`]) through the same accept loop and caps.
//!
//! Privacy: the uploader's address is read from the connection, turned into
//! its prefix and a keyed hash ([`SourceTagger`]), and then dropped: it is
//! never stored, logged or put in an error message.
//!
//! Open internet: connections are capped in all and per source
//! ([`admission`]), headers must arrive within a timeout and bodies may not
//! idle; bodies being read share one memory budget; validation (JSON parse
//! and privacy scan, CPU-bound) runs on blocking threads, at most
//! `validation_workers` at once, never on the async workers that answer
//! `/healthz`. Store calls run on one dedicated thread that takes every
//! queued insert at once and commits them together (group commit), so one
//! fsync serves many concurrent uploads.
//!
//! [`CollectedResult`]: punchscope_analysis::result::CollectedResult

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use punchscope_analysis::result::{RunResult, MAX_RESULT_BYTES};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::collector::{Inserted, NewResult, ResultStore, SourceTagger, StoreError, StoredRow};

pub mod admission;
mod metrics;

use admission::{Admission, AdmissionConfig, Refusal};
pub use metrics::CollectorMetrics;

/// Longest error message sent, in bytes: messages can quote field paths and
/// keys of the upload, which an attacker makes as long as the body.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;

/// Tunables of the collector. `Default` suits a public deployment, except
/// for the secrets, which the caller must set.
#[derive(Clone)]
pub struct CollectorConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (also the
    /// longest an idle kept-alive connection is held).
    pub header_timeout: Duration,
    /// Longest a request body may pause between two pieces; then 408.
    pub body_idle_timeout: Duration,
    /// Longest a request may take (reading the body included); then 408.
    pub request_timeout: Duration,
    /// Bytes of request bodies held at once, over all requests; beyond, 503.
    pub body_memory_bytes: usize,
    /// Uploads validated at once, each on a blocking thread.
    pub validation_workers: usize,
    /// Longest an upload waits for a validation worker; then 503.
    pub validation_wait: Duration,
    /// Per-source connections, upload rate and storage quota.
    pub admission: AdmissionConfig,
    /// Results queued for the store at most; uploads wait when it is full.
    pub queue_len: usize,
    /// Results committed together at most.
    pub max_batch: usize,
    /// Results per export page (one store call each).
    pub export_page: usize,
    /// After shutdown is signalled, how long running requests may take.
    pub shutdown_grace: Duration,
    /// The bearer token that unlocks the export; `None` disables the export.
    pub export_token: Option<String>,
    /// Groups uploaders without identifying them.
    pub tagger: SourceTagger,
    /// Counters of `/metrics`, shared with whoever else wants to read them.
    pub metrics: Arc<CollectorMetrics>,
}

impl CollectorConfig {
    /// Default limits with the given grouping key and export token.
    pub fn new(key: &[u8], export_token: Option<String>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CollectorConfig {
            max_body_bytes: MAX_RESULT_BYTES,
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            body_memory_bytes: 256 * 1024 * 1024,
            validation_workers: cores,
            validation_wait: Duration::from_secs(10),
            admission: AdmissionConfig::default(),
            queue_len: 4096,
            max_batch: 512,
            export_page: 500,
            shutdown_grace: Duration::from_secs(10),
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

/// Serves plain HTTP on `listener` until `shutdown` completes, then finishes
/// running requests (up to `config.shutdown_grace`), lets the store commit
/// what it was given, and returns.
pub async fn run(
    listener: TcpListener,
    config: CollectorConfig,
    store: Box<dyn ResultStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    serve(listener, None, config, store, shutdown).await
}

/// As [`run`], over TLS: the collector terminates HTTPS itself with `tls`
/// (see [`super::tls::load_server_config`]). Every cap and timeout of
/// [`run`] holds; the TLS handshake has its own timeout.
pub async fn run_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: CollectorConfig,
    store: Box<dyn ResultStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve(listener, Some(acceptor), config, store, shutdown).await
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: CollectorConfig,
    store: Box<dyn ResultStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    let (tx, rx) = mpsc::channel(config.queue_len.max(1));
    let max_batch = config.max_batch.max(1);
    let writer = std::thread::Builder::new()
        .name("collector-store".into())
        .spawn(move || store_thread(store, rx, max_batch))
        .map_err(CollectorError::Thread)?;
    let state = Arc::new(AppState::new(config, tx));
    serve_connections(listener, tls, state, shutdown).await;
    // Every sender lived in the state, whose last copy went with the last
    // connection: the thread drains and ends.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(())
}

struct AppState {
    config: CollectorConfig,
    store: mpsc::Sender<StoreRequest>,
    /// SHA-256 of the export token, compared in constant time.
    token_digest: Option<[u8; 32]>,
    admission: Mutex<Admission>,
    /// One permit per byte of request body held in memory.
    body_memory: Arc<Semaphore>,
    /// One permit per validation running.
    validators: Arc<Semaphore>,
}

impl AppState {
    fn new(config: CollectorConfig, store: mpsc::Sender<StoreRequest>) -> AppState {
        let token_digest = config
            .export_token
            .as_ref()
            .map(|t| Sha256::digest(t.as_bytes()).into());
        AppState {
            admission: Mutex::new(Admission::new(config.admission.clone())),
            body_memory: Arc::new(Semaphore::new(
                config.body_memory_bytes.min(Semaphore::MAX_PERMITS),
            )),
            validators: Arc::new(Semaphore::new(config.validation_workers.max(1))),
            config,
            store,
            token_digest,
        }
    }

    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Accepts connections until `shutdown`, each served by hyper's HTTP/1 with
/// a header-read timeout (over TLS when `tls` is set, after a handshake that
/// must finish within [`super::tls::HANDSHAKE_TIMEOUT`]); over the caps a
/// connection gets a short answer and is closed (over TLS it is only closed:
/// a refusal is not worth a handshake). Then waits for running requests up
/// to the grace period and drops the rest.
async fn serve_connections(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let app = router(state.clone());
    let permits = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    // Refusals linger briefly so the client reads them; only a few at once.
    let refusals = Arc::new(Semaphore::new(64));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .max_buf_size(64 * 1024);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("collector: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            state.config.metrics.count_connection_refused("busy");
            if tls.is_some() {
                continue;
            }
            refuse(
                stream,
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(5),
                "collector busy: too many connections, retry in 5 s",
                &refusals,
            );
            continue;
        };
        let source = match state.admission().open_connection(peer.ip()) {
            Ok(source) => source,
            Err(refusal) => {
                state.config.metrics.count_connection_refused("per_source");
                if tls.is_some() {
                    continue;
                }
                refuse(
                    stream,
                    StatusCode::TOO_MANY_REQUESTS,
                    refusal.retry_after(),
                    &refusal.message(),
                    &refusals,
                );
                continue;
            }
        };
        let open = OpenConnection {
            state: state.clone(),
            source,
            _permit: permit,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: axum::http::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        match &tls {
            None => {
                let connection =
                    http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    let _ = connection.await;
                    drop(open);
                });
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                let http = http.clone();
                let watcher = graceful.watcher();
                connections.spawn(async move {
                    let handshake =
                        tokio::time::timeout(super::tls::HANDSHAKE_TIMEOUT, handshake).await;
                    if let Ok(Ok(stream)) = handshake {
                        let connection =
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        let _ = watcher.watch(connection).await;
                    }
                    drop(open);
                });
            }
        }
    }
    drop(listener);
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("collector: requests still running after {grace:?} are dropped");
    }
    connections.shutdown().await;
}

/// Holds a connection's place in the caps until it ends, however it ends.
struct OpenConnection {
    state: Arc<AppState>,
    source: crate::net::source_limit::SourceKey,
    _permit: OwnedSemaphorePermit,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.state.admission().close_connection(self.source);
    }
}

/// Answers a connection we will not serve and closes it. The answer is
/// written at once; the close waits (briefly, a few at a time) for the
/// client's request so that it is a FIN the client can read the answer
/// before, not a RST.
fn refuse(
    stream: TcpStream,
    status: StatusCode,
    retry_after: Duration,
    message: &str,
    lingering: &Arc<Semaphore>,
) {
    let body = serde_json::json!({ "error": message }).to_string();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nretry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        retry_after.as_secs().max(1),
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    let Ok(linger) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut stream = stream;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            let mut read = 0;
            while read < 64 * 1024 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
        })
        .await;
        drop(linger);
    });
}

fn router(state: Arc<AppState>) -> Router {
    let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        state.config.request_timeout,
    );
    let metrics = state.config.metrics.clone();
    let count_uploads = axum::middleware::map_response(move |response: Response| {
        let metrics = metrics.clone();
        async move {
            metrics.count_upload(response.status());
            response
        }
    });
    // Counted outside the timeout, so a 408 of the timeout is counted too.
    let limited = Router::new()
        .route(
            "/v1/results",
            post(post_result).layer(timeout).layer(count_uploads),
        )
        .route("/v1/results.jsonl", get(export).layer(timeout));
    // `/healthz` and `/metrics` stay outside the request limits: they must
    // answer while uploads are slow or queued.
    let metrics = state.config.metrics.clone();
    Router::new()
        .merge(limited)
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { super::metrics::response(metrics.render()) }
            }),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: use POST /v1/results, GET /v1/results.jsonl, GET /healthz or GET /metrics",
            )
        })
        .with_state(state)
}

/// A JSON error answer, its message cut to [`MAX_ERROR_MESSAGE_BYTES`].
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = crate::proto::ndjson::bounded_text(message.into(), MAX_ERROR_MESSAGE_BYTES);
    let body = serde_json::json!({ "error": message });
    (status, Json(body)).into_response()
}

/// 429 (or 503) with a `Retry-After` header.
fn retry_later(status: StatusCode, retry_after: Duration, message: String) -> Response {
    let mut response = error(status, message);
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn refused(refusal: Refusal) -> Response {
    retry_later(
        StatusCode::TOO_MANY_REQUESTS,
        refusal.retry_after(),
        refusal.message(),
    )
}

/// What validation made of an upload.
struct Validated {
    run_id: String,
    schema_version: u32,
    /// The result re-serialized: what is stored.
    body: String,
}

/// Parses and checks an upload (UTF-8, schema, privacy scan, types,
/// values): CPU-bound, so it runs on a blocking thread.
fn validate(body: &[u8]) -> Result<Validated, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
    let result = RunResult::from_json(text).map_err(|e| e.to_string())?;
    Ok(Validated {
        run_id: result.run_id.to_string(),
        schema_version: result.schema_version,
        body: result.to_json(),
    })
}

async fn post_result(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let source_ip = peer.ip();
    if let Err(refusal) = state.admission().admit_upload(source_ip, Instant::now()) {
        return refused(refusal);
    }
    let max = state.config.max_body_bytes;
    let (body, memory) = match read_limited(body, &state).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "result larger than {max} bytes: split the run or raise the collector's limit"
                ),
            )
        }
        Err(BodyError::Idle) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body paused for more than {} s",
                    state.config.body_idle_timeout.as_secs()
                ),
            )
        }
        Err(BodyError::NoMemory) => {
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(5),
                "collector busy: too many uploads in flight, retry in 5 s".into(),
            )
        }
        Err(BodyError::Read(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    // Quota first: a source over its quota costs no validation.
    if let Err(refusal) = state
        .admission()
        .check_storage(source_ip, Instant::now(), body.len())
    {
        return refused(refusal);
    }
    let validated = match validate_off_the_executor(&state, body, memory).await {
        Ok(Ok(validated)) => validated,
        Ok(Err(message)) => return error(StatusCode::BAD_REQUEST, message),
        Err(busy) => return busy,
    };
    store(&state, source_ip, validated).await
}

/// Runs [`validate`] on a blocking thread once a validation worker is free
/// (waiting at most `validation_wait`; then 503). The body's memory permit
/// is released when validation is done with the body.
async fn validate_off_the_executor(
    state: &AppState,
    body: Bytes,
    memory: Option<OwnedSemaphorePermit>,
) -> Result<Result<Validated, String>, Response> {
    let busy = || {
        retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(5),
            "collector busy validating uploads: retry in 5 s".into(),
        )
    };
    let worker = tokio::time::timeout(
        state.config.validation_wait,
        state.validators.clone().acquire_owned(),
    )
    .await;
    let Ok(Ok(worker)) = worker else {
        return Err(busy());
    };
    let validated = tokio::task::spawn_blocking(move || {
        let validated = validate(&body);
        drop((body, memory, worker));
        validated
    })
    .await;
    validated.map_err(|_| busy())
}

async fn store(state: &AppState, source_ip: IpAddr, validated: Validated) -> Response {
    let (source_net, source_group) = state.config.tagger.tag(source_ip);
    let Validated {
        run_id,
        schema_version,
        body,
    } = validated;
    let stored_bytes = body.len();
    let new = NewResult {
        run_id: run_id.clone(),
        schema_version,
        received_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        source_net,
        source_group,
        body,
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
        Ok(Ok(Inserted::New)) => {
            state
                .admission()
                .charge_storage(source_ip, Instant::now(), stored_bytes);
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "status": "stored", "run_id": run_id })),
            )
                .into_response()
        }
        Ok(Ok(Inserted::Duplicate)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "already_stored", "run_id": run_id })),
        )
            .into_response(),
        Ok(Ok(Inserted::Conflict)) => error(
            StatusCode::CONFLICT,
            format!(
                "run {run_id} is already stored with other content; a run id names one result: \
                 keep the stored one, or upload this result under a new run id"
            ),
        ),
        Ok(Err(e)) if e.is_disk_full() => {
            eprintln!("collector: storing run {run_id} failed, storage full: {e}");
            retry_later(
                StatusCode::INSUFFICIENT_STORAGE,
                Duration::from_secs(300),
                "the collector's storage is full: keep the result and retry later".into(),
            )
        }
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

/// The export token of an `Authorization` header, whose scheme (`Bearer`)
/// is case-insensitive (RFC 9110, section 11.1).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn export(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(expected) = state.token_digest else {
        return error(
            StatusCode::FORBIDDEN,
            "export is disabled: start the collector with --export-token-file",
        );
    };
    let Some(given) = bearer_token(&headers) else {
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
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
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
    /// No piece of body within the idle timeout.
    Idle,
    /// The memory budget of bodies in flight is spent.
    NoMemory,
    Read(String),
}

/// Reads at most `max_body_bytes` of body, holding one permit of the body
/// memory budget per byte kept, and giving up when the body pauses longer
/// than the idle timeout. A larger body is still read (and dropped) up to a
/// few times the limit, so that the client, still sending, gets to read the
/// 413 instead of a broken connection.
async fn read_limited(
    body: Body,
    state: &AppState,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
    use futures_util::StreamExt;
    let max = state.config.max_body_bytes;
    let drain_limit = max.saturating_mul(8).max(1024 * 1024);
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut memory: Option<OwnedSemaphorePermit> = None;
    let mut seen = 0usize;
    loop {
        let next = tokio::time::timeout(state.config.body_idle_timeout, stream.next());
        let Some(chunk) = next.await.map_err(|_| BodyError::Idle)? else {
            break;
        };
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        seen = seen.saturating_add(chunk.len());
        if seen > drain_limit {
            return Err(BodyError::TooLarge);
        }
        if seen <= max {
            let bytes = u32::try_from(chunk.len()).map_err(|_| BodyError::NoMemory)?;
            let more = state
                .body_memory
                .clone()
                .try_acquire_many_owned(bytes)
                .map_err(|_| BodyError::NoMemory)?;
            match &mut memory {
                Some(held) => held.merge(more),
                None => memory = Some(more),
            }
            buf.extend_from_slice(&chunk);
        } else if !buf.is_empty() {
            // Over the limit: what was kept is no longer needed.
            buf = Vec::new();
            memory = None;
        }
    }
    if seen > max {
        return Err(BodyError::TooLarge);
    }
    Ok((Bytes::from(buf), memory))
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
                            let _ = reply.send(Err(e.for_each_upload()));
                        }
                    }
                }
            }
        }
    }
}
