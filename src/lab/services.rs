//! Punchscope's own servers run inside a lab's internet namespace, stopped when their guard drops.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::instance::{Lab, LabError};
use super::netns::{self, NetnsError};

/// A `serve echo` running in the lab's internet namespace.
pub struct EchoService {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<std::io::Result<()>, NetnsError>>>,
}

impl EchoService {
    /// Starts the echo server on `endpoints` (addresses of the internet namespace)
    /// and returns once it listens.
    pub fn start(lab: &Lab, endpoints: &[SocketAddr]) -> Result<Self, LabError> {
        let endpoints = endpoints.to_vec();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = netns::spawn_in(&lab.internet_netns(), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listeners = match crate::server::echo::bind_listeners(&endpoints) {
                    Ok(listeners) => listeners,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(std::io::Error::other(e.to_string()));
                    }
                };
                let _ = ready_tx.send(Ok(()));
                crate::server::echo::run(listeners, Default::default(), async {
                    let _ = stopped.await;
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
            })
        });
        let service = Self {
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready.recv() {
            Ok(Ok(())) => Ok(service),
            Ok(Err(e)) => Err(LabError::Traffic(std::io::Error::other(format!(
                "echo server: {e}"
            )))),
            Err(_) => Err(LabError::Traffic(std::io::Error::other(
                "echo server thread ended early",
            ))),
        }
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
