//! A byte stream with traffic counters and a push-back buffer, shared by the v1 and v2 transports.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Stop;

/// Wraps the caller's stream. Bytes pushed back with [`Conn::unread`] (the
/// responder's 16-byte peek, the bytes after a BIP324 garbage terminator)
/// are served again before the stream is read, and are counted only once.
pub(crate) struct Conn<S> {
    io: S,
    pending: Vec<u8>,
    pending_pos: usize,
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    pub(crate) fn new(io: S) -> Self {
        Conn {
            io,
            pending: Vec::new(),
            pending_pos: 0,
            sent: 0,
            received: 0,
        }
    }

    /// Puts bytes back in front of whatever is still unread.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        let mut rest = bytes.to_vec();
        rest.extend_from_slice(&self.pending[self.pending_pos..]);
        self.pending = rest;
        self.pending_pos = 0;
    }

    /// Reads at least one byte; a closed stream is [`Stop::Closed`].
    pub(crate) async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, Stop> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pending_pos < self.pending.len() {
            let available = &self.pending[self.pending_pos..];
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            self.pending_pos += n;
            if self.pending_pos == self.pending.len() {
                self.pending.clear();
                self.pending_pos = 0;
            }
            return Ok(n);
        }
        match self.io.read(buf).await {
            Ok(0) => Err(Stop::Closed),
            Ok(n) => {
                self.received += n as u64;
                Ok(n)
            }
            Err(err) => Err(io_stop(err)),
        }
    }

    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Stop> {
        let mut filled = 0;
        while filled < buf.len() {
            filled += self.read_some(&mut buf[filled..]).await?;
        }
        Ok(())
    }

    /// Writes everything and flushes, so a deadline covers the bytes really leaving.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.io.write_all(bytes).await.map_err(io_stop)?;
        self.io.flush().await.map_err(io_stop)?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// Best-effort orderly close; the outcome is already decided.
    pub(crate) async fn shutdown(&mut self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, self.io.shutdown()).await;
    }

    /// Reads and drops bytes until the peer closes, at most `within`, so
    /// that our close finds an empty receive buffer (no RST). Counted as
    /// received.
    pub(crate) async fn drain_until_closed(&mut self, within: std::time::Duration) {
        let mut sink = [0u8; 4096];
        let drain = async {
            while let Ok(n) = self.io.read(&mut sink).await {
                if n == 0 {
                    return;
                }
                self.received += n as u64;
            }
        };
        let _ = tokio::time::timeout(within, drain).await;
    }
}

/// A reset or broken pipe is the peer going away, not a local I/O problem.
fn io_stop(err: io::Error) -> Stop {
    match err.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Stop::Closed,
        _ => Stop::Io(err.to_string()),
    }
}
