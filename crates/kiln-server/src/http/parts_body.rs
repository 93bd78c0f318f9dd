//! A response body sent as the pieces it was encoded in: the JSON part, then large binary
//! outputs straight from the tensors' memory. Its exact length is known, so HTTP/1.1 sends a
//! `Content-Length`, and hyper writes the pieces with vectored writes instead of joining them.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use kiln_protocol::EncodedResponse;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The body of an [`EncodedResponse`], one frame per piece.
pub(crate) struct PartsBody {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl PartsBody {
    pub(crate) fn new(encoded: EncodedResponse) -> Self {
        let remaining = encoded.len() as u64;
        let mut parts = VecDeque::with_capacity(1 + encoded.tail.len());
        parts.push_back(encoded.head);
        parts.extend(encoded.tail.into_iter().filter(|b| !b.is_empty()));
        PartsBody { parts, remaining }
    }
}

impl Body for PartsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.parts.pop_front().map(|b| {
            self.remaining -= b.len() as u64;
            Ok(Frame::data(b))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
