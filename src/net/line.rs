//! One newline-delimited connection: reads one line bounded in length (and,
//! if asked, in time) and writes one line. The framing rules are the sans-io
//! [`crate::proto::ndjson`]; this is only the tokio side of them.
//!
//! Reads are cancel-safe: bytes are kept in the connection's own buffer
//! only after a read completed, so a read raced in `select!` or cut by a
//! deadline loses nothing. The buffer never holds more than one line's
//! worth plus one read, whatever the peer sends.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proto::ndjson::{self, LineError};

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 1024;

/// Why a line could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LineConnectionError {
    /// The bytes arrived but are not a line we accept (too long, unterminated, not UTF-8).
    #[error(transparent)]
    Line(#[from] LineError),
    #[error("no line before the deadline")]
    Timeout,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A byte stream read and written one line at a time, lines at most
/// `max_line` bytes long, newline included.
#[derive(Debug)]
pub struct LineConnection<S> {
    stream: S,
    /// Bytes read but not yet returned as a line.
    buffer: Vec<u8>,
    max_line: usize,
}

impl<S> LineConnection<S> {
    pub fn new(stream: S, max_line: usize) -> Self {
        LineConnection {
            stream,
            buffer: Vec::new(),
            max_line,
        }
    }

    /// The stream, e.g. for its addresses.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl LineConnection<TcpStream> {
    /// A reading half (which keeps what was already buffered) and a writing
    /// half, for a reader and a writer that run apart.
    pub fn into_split(
        self,
    ) -> (
        LineConnection<OwnedReadHalf>,
        LineConnection<OwnedWriteHalf>,
    ) {
        let (read, write) = self.stream.into_split();
        let reader = LineConnection {
            stream: read,
            buffer: self.buffer,
            max_line: self.max_line,
        };
        (reader, LineConnection::new(write, self.max_line))
    }
}

impl<S: AsyncRead + Unpin> LineConnection<S> {
    /// The next line without its newline (and `\r`); `None` on EOF between
    /// lines. Waits as long as the peer takes: callers whose deadlines live
    /// elsewhere use this, the others [`LineConnection::read_line_before`].
    pub async fn read_line(&mut self) -> Result<Option<String>, LineConnectionError> {
        loop {
            if let Some(len) = self.next_line_len()? {
                let framed = ndjson::frame(&self.buffer[..len], self.max_line).map(str::to_string);
                self.buffer.drain(..len);
                self.release_spare_capacity();
                return Ok(Some(framed?));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                // Shorter than a line and without a newline, or it would have been returned.
                self.buffer = Vec::new();
                return Err(LineError::Unterminated.into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// As [`LineConnection::read_line`], giving up at `deadline`.
    pub async fn read_line_before(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<String>, LineConnectionError> {
        tokio::time::timeout_at(deadline, self.read_line())
            .await
            .map_err(|_| LineConnectionError::Timeout)?
    }

    /// Discards what is buffered and reads (without keeping it) until EOF or
    /// `limit` bytes, so that our close comes after the peer's and is a FIN,
    /// not a RST that could destroy a last line the peer has not read yet.
    pub async fn drain(&mut self, limit: u64) {
        self.buffer = Vec::new();
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut (&mut self.stream).take(limit), &mut sink).await;
    }

    fn next_line_len(&self) -> Result<Option<usize>, LineError> {
        ndjson::next_line_len(&self.buffer, self.max_line)
    }

    /// A long line grew the buffer: idle connections should not keep that.
    fn release_spare_capacity(&mut self) {
        if self.buffer.capacity() > 2 * READ_CHUNK && self.buffer.len() <= READ_CHUNK {
            self.buffer.shrink_to(READ_CHUNK);
        }
    }
}

impl<S: AsyncWrite + Unpin> LineConnection<S> {
    /// Writes one encoded line (newline included).
    pub async fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        debug_assert!(line.ends_with(b"\n") && line.len() <= self.max_line);
        self.stream.write_all(line).await
    }

    /// As [`LineConnection::write_line`], giving up at `deadline`.
    pub async fn write_line_before(
        &mut self,
        line: &[u8],
        deadline: Instant,
    ) -> Result<(), LineConnectionError> {
        tokio::time::timeout_at(deadline, self.write_line(line))
            .await
            .map_err(|_| LineConnectionError::Timeout)?
            .map_err(LineConnectionError::Io)
    }

    /// Half-closes: the peer reads EOF after what was written.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pair(
        max_line: usize,
    ) -> (
        LineConnection<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        (LineConnection::new(ours, max_line), theirs)
    }

    #[tokio::test]
    async fn reads_lines_split_and_joined_across_reads() {
        let (mut conn, mut peer) = pair(16);
        peer.write_all(b"one\r\ntw").await.unwrap();
        assert_eq!(conn.read_line().await.unwrap().as_deref(), Some("one"));
        peer.write_all(b"o\nthree\n").await.unwrap();
        assert_eq!(conn.read_line().await.unwrap().as_deref(), Some("two"));
        assert_eq!(conn.read_line().await.unwrap().as_deref(), Some("three"));
        drop(peer);
        assert_eq!(conn.read_line().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_line_without_newline_within_the_limit_is_too_long() {
        let (mut conn, mut peer) = pair(16);
        peer.write_all(&[b'x'; 100]).await.unwrap();
        let err = conn.read_line().await.unwrap_err();
        assert!(matches!(
            err,
            LineConnectionError::Line(LineError::LineTooLong { max: 16 })
        ));
        assert!(conn.buffer.len() < 16 + READ_CHUNK, "buffer stays bounded");
    }

    #[tokio::test]
    async fn eof_inside_a_line_is_unterminated() {
        let (mut conn, mut peer) = pair(16);
        peer.write_all(b"{}").await.unwrap();
        drop(peer);
        assert!(matches!(
            conn.read_line().await.unwrap_err(),
            LineConnectionError::Line(LineError::Unterminated)
        ));
    }

    #[tokio::test]
    async fn a_deadline_cuts_the_wait_and_loses_no_bytes() {
        let (mut conn, mut peer) = pair(16);
        peer.write_all(b"hal").await.unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(matches!(
            conn.read_line_before(soon).await.unwrap_err(),
            LineConnectionError::Timeout
        ));
        peer.write_all(b"f\n").await.unwrap();
        assert_eq!(conn.read_line().await.unwrap().as_deref(), Some("half"));
    }

    #[tokio::test]
    async fn writes_lines_the_peer_reads() {
        let (mut conn, peer) = pair(16);
        let mut peer = LineConnection::new(peer, 16);
        conn.write_line(b"{\"v\":1}\n").await.unwrap();
        conn.shutdown().await.unwrap();
        assert_eq!(
            peer.read_line().await.unwrap().as_deref(),
            Some("{\"v\":1}")
        );
        assert_eq!(peer.read_line().await.unwrap(), None);
    }
}
