//! Reading and writing wire frames ([`super::wire`]) on async byte streams.
//!
//! Generic over tokio's `AsyncRead`/`AsyncWrite`, so handlers work the same on
//! quinn streams and on in-memory pipes in tests. Every read is bounded by the
//! frame cap given by the caller.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::wire::{self, ErrorCode, Message, WireError, LEN_PREFIX};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended in the middle of a frame.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not a valid frame.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl FrameError {
    /// The code to close the stream or connection with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Io(_) => ErrorCode::ProtocolViolation,
            FrameError::Wire(e) => e.code(),
        }
    }
}

/// Reads one frame. `Ok(None)` if the stream ended cleanly before a new frame.
///
/// Not cancel-safe: dropping the future mid-frame loses the bytes read so far.
pub async fn read_frame<M: Message, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<M>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let len = wire::decode_len(prefix, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(wire::decode_body(&body)?))
}

/// Writes one frame.
pub async fn write_frame<M: Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &M,
    max: usize,
) -> Result<(), FrameError> {
    let frame = wire::encode(msg, max)?;
    w.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{Control, MAX_CONTROL_FRAME};

    #[tokio::test]
    async fn frames_cross_a_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for i in 0..100 {
                write_frame(&mut a, &Control::Ping(i), MAX_CONTROL_FRAME)
                    .await
                    .unwrap();
            }
        });
        for i in 0..100 {
            let m: Option<Control> = read_frame(&mut b, MAX_CONTROL_FRAME).await.unwrap();
            assert_eq!(m, Some(Control::Ping(i)));
        }
        writer.await.unwrap();
        assert!(read_frame::<Control, _>(&mut b, MAX_CONTROL_FRAME)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_fail() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<Control, _>(&mut b, MAX_CONTROL_FRAME).await,
            Err(FrameError::Io(_))
        ));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<Control, _>(&mut b, MAX_CONTROL_FRAME)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    }
}
