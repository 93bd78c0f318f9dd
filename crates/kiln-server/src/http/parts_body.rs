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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use kiln_core::Tensor;
    use kiln_protocol::{encode_response, encode_response_parts, Delivery};

    #[tokio::test]
    async fn the_parts_make_the_one_buffer_body_with_an_exact_length() {
        let big: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let outputs = [
            (
                Tensor::from_vec("a", vec![2], &[1f32, 2.0]),
                Delivery::Binary,
            ),
            (Tensor::from_vec("b", vec![10_000], &big), Delivery::Binary),
            (Tensor::from_vec("c", vec![1], &[3f32]), Delivery::Binary),
        ];
        let encoded = encode_response_parts("m", "1", None, &outputs).unwrap();
        assert_eq!(encoded.tail.len(), 2);
        let body = PartsBody::new(encoded);
        let (joined, _) = encode_response("m", "1", None, &outputs).unwrap();
        assert_eq!(body.size_hint().exact(), Some(joined.len() as u64));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, joined);
    }
}
