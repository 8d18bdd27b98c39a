//! A server's `run` future spawned on the test's runtime together with the
//! shutdown signal it was handed, so that stopping it is one bounded call.
//! The echo and rendezvous harnesses both start their servers this way.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::WAIT;

/// The shutdown future a server's `run` is given: it completes when the
/// test stops the server (or drops the [`ServerTask`]).
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running server task and the sender of its shutdown signal.
pub struct ServerTask<E> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: Send + 'static> ServerTask<E> {
    /// Spawns `serve(shutdown)`, e.g. `|shutdown| run(listener, config, shutdown)`.
    pub fn spawn<F>(serve: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(Box::pin(async {
            let _ = stopped.await;
        })));
        ServerTask { stop, task }
    }

    /// Signals shutdown and waits (bounded) for `run` to return what it returned.
    pub async fn stop(self) -> Result<(), E> {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops within the wait")
            .expect("server task did not panic")
    }
}
