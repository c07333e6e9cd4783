//! The frame decoder as a node runs it: a stream of length-prefixed postcard
//! frames, read both by the sans-IO `wire::decode` and by `frame::read_frame`
//! (the function every handler calls) over a reader that hands out the bytes in
//! fuzzer-chosen pieces. The two must agree frame by frame, never panic, never
//! read past a frame, and refuse an oversized length before reading its body.
//!
//! Input: `[selector, step, cap_hi, cap_lo, stream...]`. The selector picks the
//! message type (and whether the cap is `MAX_CONTROL_FRAME` or `cap_hi:cap_lo`),
//! `step` is the most bytes one read returns (0: no limit).

#![no_main]

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use quic_peer::proto::frame::{read_frame, FrameError};
use quic_peer::proto::wire::{
    self, Control, Message, Request, Response, WireError, LEN_PREFIX, MAX_CONTROL_FRAME,
};
use tokio::io::{AsyncRead, ReadBuf};

/// An in-memory stream that returns at most `step` bytes per read.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data = self.data;
        let n = data.len().min(self.step).min(buf.remaining());
        let (head, rest) = data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (its reader is in memory) to completion.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory read never blocks"),
    }
}

fn check<M: Message + PartialEq + Debug>(stream: &[u8], max: usize, step: usize) {
    let mut reader = Pieces { data: stream, step };
    let mut pos = 0;
    loop {
        let rest = &stream[pos..];
        let sans_io = wire::decode::<M>(rest, max);
        let read = now(read_frame::<M, _>(&mut reader, max));
        let consumed = rest.len() - reader.data.len();
        let declared = rest
            .get(..LEN_PREFIX)
            .map(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize);
        match sans_io {
            Ok(Some((msg, used))) => {
                match read {
                    Ok(Some(m)) => assert_eq!(m, msg),
                    other => panic!("decode gave {msg:?}, read_frame {other:?}"),
                }
                assert_eq!(Some(used - LEN_PREFIX), declared);
                assert_eq!(consumed, used, "read_frame read past its frame");
                // What a node accepts it can send back, no larger, under the same cap.
                let frame = wire::encode(&msg, max).expect("an accepted message re-encodes");
                assert!(frame.len() <= used);
                assert_eq!(wire::decode::<M>(&frame, max), Ok(Some((msg, frame.len()))));
                pos += used;
            }
            Ok(None) => {
                match read {
                    Ok(None) => assert!(rest.is_empty()),
                    Err(FrameError::Io(e)) => {
                        assert!(!rest.is_empty());
                        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                    }
                    other => panic!("decode wants more bytes, read_frame gave {other:?}"),
                }
                assert_eq!(consumed, rest.len());
                return;
            }
            Err(e) => {
                match read {
                    Err(FrameError::Wire(w)) => assert_eq!(w, e),
                    other => panic!("decode failed with {e:?}, read_frame gave {other:?}"),
                }
                let len = declared.expect("an error needs at least a length prefix");
                if len > max {
                    // Refused on the prefix alone: not a byte of the body read.
                    assert_eq!(e, WireError::FrameTooLarge { len, max });
                    assert_eq!(consumed, LEN_PREFIX);
                } else {
                    assert_eq!(consumed, LEN_PREFIX + len);
                }
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let [selector, step, cap_hi, cap_lo] = *head;
    let step = if step == 0 {
        usize::MAX
    } else {
        usize::from(step)
    };
    let max = if selector & 0x80 == 0 {
        MAX_CONTROL_FRAME
    } else {
        usize::from(u16::from_be_bytes([cap_hi, cap_lo]))
    };
    match selector % 3 {
        0 => check::<Request>(stream, max, step),
        1 => check::<Response>(stream, max, step),
        _ => check::<Control>(stream, max, step),
    }
});
