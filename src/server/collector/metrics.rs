//! What the collector counts for `/metrics`: answers to uploads by what they
//! meant, and connections refused before any request was read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::http::StatusCode;

use crate::server::metrics::{MetricKind, MetricsText};

/// Counters behind the collector's `/metrics`. Rejections are keyed by
/// reason (`invalid` 400, `timeout` 408, `conflict` 409, `too_large` 413,
/// `rate_limited` 429, `unavailable` 503, `disk_full` 507, else
/// `http_<code>`), so limits added later are counted without touching this.
#[derive(Debug, Default)]
pub struct CollectorMetrics {
    stored: AtomicU64,
    already_stored: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
    connections_refused: Mutex<BTreeMap<&'static str, u64>>,
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
                    507 => "disk_full".to_string(),
                    other => format!("http_{other}"),
                };
                *lock(&self.refused).entry(reason).or_default() += 1;
            }
        }
    }

    /// Counts one connection closed before its request was read: `busy`
    /// (over the collector's connection cap) or `per_source` (over the
    /// source's).
    pub fn count_connection_refused(&self, reason: &'static str) {
        *lock(&self.connections_refused).entry(reason).or_default() += 1;
    }

    /// Results stored since the collector started.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let refused = lock(&self.refused).clone();
        let rows: Vec<([(&str, &str); 1], u64)> = refused
            .iter()
            .map(|(reason, n)| ([("reason", reason.as_str())], *n))
            .collect();
        let connections = lock(&self.connections_refused).clone();
        let connection_rows: Vec<([(&str, &str); 1], u64)> = connections
            .iter()
            .map(|(reason, n)| ([("reason", *reason)], *n))
            .collect();
        let rate_limited = refused.get("rate_limited").copied().unwrap_or(0)
            + connections.get("per_source").copied().unwrap_or(0);
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
            .family(
                "punchscope_collector_connections_refused_total",
                MetricKind::Counter,
                "Connections closed before a request was read, by reason.",
                &connection_rows
                    .iter()
                    .map(|(l, n)| (&l[..], *n))
                    .collect::<Vec<_>>(),
            )
            .single(
                "punchscope_collector_rate_limited_total",
                MetricKind::Counter,
                "Uploads and connections refused by a per-source limit (429).",
                rate_limited,
            )
            .finish()
    }
}

/// A counter map survives a panic elsewhere: counts are never invalid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
