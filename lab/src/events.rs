//! The lab's event log: every router's [`NatEvent`]s with lab-relative timestamps, in memory and optionally as JSONL.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::nat::{NatEvent, TimedEvent};

/// Events kept in memory at most; the JSONL file, if any, gets all of them.
const MEMORY_CAP: usize = 1_000_000;

/// One router event, stamped in milliseconds since the lab started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabEvent {
    pub t_ms: f64,
    pub router: String,
    #[serde(flatten)]
    pub event: NatEvent,
}

/// Collects events from all router tasks.
#[derive(Debug)]
pub struct EventLog {
    start: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    events: Vec<LabEvent>,
    not_kept: u64,
    file: Option<BufWriter<File>>,
}

impl EventLog {
    pub fn new(start: Instant, file: Option<File>) -> Self {
        Self {
            start,
            inner: Mutex::new(Inner {
                events: Vec::new(),
                not_kept: 0,
                file: file.map(BufWriter::new),
            }),
        }
    }

    /// Records a batch of one router's events.
    pub fn record(&self, router: &str, batch: impl IntoIterator<Item = TimedEvent>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut wrote = false;
        for timed in batch {
            let event = LabEvent {
                t_ms: timed.at.saturating_duration_since(self.start).as_secs_f64() * 1e3,
                router: router.to_string(),
                event: timed.event,
            };
            if let Some(file) = inner.file.as_mut() {
                // A failed write of the log must not stop the routers; the in-memory copy remains.
                let _ = serde_json::to_writer(&mut *file, &event)
                    .and_then(|()| file.write_all(b"\n").map_err(serde_json::Error::io));
                wrote = true;
            }
            if inner.events.len() < MEMORY_CAP {
                inner.events.push(event);
            } else {
                inner.not_kept += 1;
            }
        }
        if wrote {
            if let Some(file) = inner.file.as_mut() {
                let _ = file.flush();
            }
        }
    }

    /// Every event kept so far, in the order recorded.
    pub fn snapshot(&self) -> Vec<LabEvent> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .clone()
    }

    /// When the lab started: the zero of `t_ms`.
    pub fn start(&self) -> Instant {
        self.start
    }
}
