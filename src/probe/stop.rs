//! The stop signal of a run: once fired it stays fired, so a stop arriving
//! between two steps (or two pairings of a reference peer) is not lost.

use tokio::sync::watch;

/// Listens for the stop; cheap to clone, one per step that must end early.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

/// Fires the stop.
#[derive(Debug)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Stop {
    /// A stop fired by its handle (tests, embedding programs).
    pub fn new() -> (StopHandle, Stop) {
        let (tx, rx) = watch::channel(false);
        (StopHandle(tx), Stop(rx))
    }

    /// A stop fired by Ctrl-C or SIGTERM (a lab campaign ends reference
    /// peers with SIGTERM and expects their last result uploaded). Needs a
    /// tokio runtime.
    pub fn on_signals() -> Stop {
        let (handle, stop) = Stop::new();
        tokio::spawn(async move {
            #[cfg(unix)]
            let term = async {
                use tokio::signal::unix::{signal, SignalKind};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        term.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = term => {}
            }
            handle.stop();
        });
        stop
    }

    /// Whether the stop has fired.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the stop has fired (at once if it already has).
    pub async fn stopped(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|stopped| *stopped).await.is_err() {
            // The handle is gone without firing: this stop never comes.
            std::future::pending::<()>().await;
        }
    }
}
