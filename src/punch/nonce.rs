//! The nonce proof: right after connecting, both sides send the coordinator's
//! nonce and check the other's, so a connection to the wrong host never counts.
//!
//! Wire: one line `punchscope-nonce <hex>\n` each way, at most [`MAX_LINE`]
//! bytes. It is read byte by byte so that nothing after it (the Bitcoin
//! handshake) is consumed.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFIX: &str = "punchscope-nonce ";
/// Longest nonce line accepted.
pub const MAX_LINE: usize = 128;

/// Why the peer did not prove the nonce.
#[derive(Debug, thiserror::Error)]
pub enum NonceError {
    #[error("the peer sent a different nonce: this connection reached the wrong host")]
    Mismatch,
    #[error("the peer sent no nonce line within {0:?}")]
    Timeout(Duration),
    #[error("the peer closed the connection before proving the nonce")]
    Closed,
    #[error("the peer sent something that is not a nonce line")]
    Garbage,
    #[error("nonce exchange failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends ours, reads theirs, compares.
pub async fn exchange<S>(stream: &mut S, nonce: &str, timeout: Duration) -> Result<(), NonceError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let line = format!("{PREFIX}{nonce}\n");
    let exchange = async {
        stream.write_all(line.as_bytes()).await?;
        let mut received = Vec::with_capacity(line.len());
        loop {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await? == 0 {
                return Err(NonceError::Closed);
            }
            if byte[0] == b'\n' {
                break;
            }
            received.push(byte[0]);
            if received.len() > MAX_LINE {
                return Err(NonceError::Garbage);
            }
        }
        let text = std::str::from_utf8(&received).map_err(|_| NonceError::Garbage)?;
        let theirs = text.strip_prefix(PREFIX).ok_or(NonceError::Garbage)?;
        if theirs == nonce {
            Ok(())
        } else {
            Err(NonceError::Mismatch)
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| NonceError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn matching_nonces_pass_and_leave_later_bytes_unread() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let side_b = tokio::spawn(async move {
            let result = exchange(&mut b, "abc123", Duration::from_secs(1)).await;
            b.write_all(b"after").await.unwrap();
            result
        });
        exchange(&mut a, "abc123", Duration::from_secs(1))
            .await
            .unwrap();
        side_b.await.unwrap().unwrap();
        let mut rest = [0u8; 5];
        a.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
    }

    #[tokio::test]
    async fn a_different_nonce_is_the_wrong_peer() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let other =
            tokio::spawn(async move { exchange(&mut b, "zzz", Duration::from_secs(1)).await });
        assert!(matches!(
            exchange(&mut a, "abc", Duration::from_secs(1)).await,
            Err(NonceError::Mismatch)
        ));
        assert!(matches!(other.await.unwrap(), Err(NonceError::Mismatch)));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_garbage_and_close_are_told_apart() {
        let (mut a, _b) = tokio::io::duplex(1024);
        assert!(matches!(
            exchange(&mut a, "n", Duration::from_millis(300)).await,
            Err(NonceError::Timeout(_))
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        b.write_all(b"GET / HTTP/1.1\n").await.unwrap();
        assert!(matches!(
            exchange(&mut a, "n", Duration::from_secs(1)).await,
            Err(NonceError::Garbage)
        ));
        let (mut a, b) = tokio::io::duplex(1024);
        drop(b);
        assert!(matches!(
            exchange(&mut a, "n", Duration::from_secs(1)).await,
            Err(NonceError::Closed) | Err(NonceError::Io(_))
        ));
    }
}
