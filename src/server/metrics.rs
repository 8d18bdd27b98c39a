//! `/metrics` in the Prometheus text format (version 0.0.4) and `/healthz`:
//! a small writer for counters and gauges, and a tiny HTTP listener for
//! servers that have no HTTP side of their own (the coordinator, the echo
//! servers).

use std::fmt::Write;
use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds one exposition: families of samples, each with its help and type.
#[derive(Debug, Default)]
pub struct MetricsText {
    text: String,
}

impl MetricsText {
    pub fn new() -> MetricsText {
        MetricsText::default()
    }

    /// A counter (only goes up) or gauge family with one sample per label set.
    /// `labels` are `(label, value)` pairs; values are escaped.
    pub fn family(
        &mut self,
        name: &str,
        kind: MetricKind,
        help: &str,
        samples: &[(&[(&str, &str)], u64)],
    ) -> &mut Self {
        let kind = match kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = write!(self.text, "{name}");
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(self.text, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(self.text, " {value}");
        }
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: MetricKind, help: &str, value: u64) -> &mut Self {
        self.family(name, kind, help, &[(&[], value)])
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A `/metrics` answer.
pub fn response(text: String) -> axum::response::Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Serves `/metrics` (what `render` says at each scrape) and `/healthz` on
/// `listener` until `shutdown`. Meant for an operator's address (loopback,
/// a private network): it says how busy the campaign is.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { response(render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_the_text_format() {
        let text = MetricsText::new()
            .single("a_total", MetricKind::Counter, "As.", 3)
            .family(
                "b",
                MetricKind::Gauge,
                "Bs by kind.",
                &[(&[("kind", "x\"y")], 1), (&[("kind", "z")], 0)],
            )
            .finish();
        assert_eq!(
            text,
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n# HELP b Bs by kind.\n# TYPE b gauge\nb{kind=\"x\\\"y\"} 1\nb{kind=\"z\"} 0\n"
        );
    }
}
