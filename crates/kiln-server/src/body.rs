//! A request body that must keep arriving: after a grace period its average rate must stay
//! above a minimum (as Kestrel's `MinRequestBodyDataRate` does), so a client trickling a body,
//! or declaring one and never sending it, frees its connection after a bounded time.

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error a body yields when it arrives too slowly.
#[derive(Debug, thiserror::Error)]
#[error("request body arrived too slowly: {received} bytes after {elapsed:?} (at least {rate} bytes/s required after {grace:?})")]
pub struct BodyTooSlow {
    /// Bytes received so far.
    pub received: u64,
    /// Time since the body was first polled.
    pub elapsed: Duration,
    /// The least rate.
    pub rate: u64,
    /// The grace period.
    pub grace: Duration,
}

/// Whether `e` (an error reading a body, with its causes) is a [`BodyTooSlow`].
pub fn is_too_slow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTooSlow>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Wraps a body with the rate check.
pub struct MinRateBody {
    inner: Body,
    grace: Duration,
    rate: u64,
    start: Option<Instant>,
    received: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl MinRateBody {
    /// `inner` must deliver its bytes at `rate` bytes/s on average once `grace` has passed.
    pub fn new(inner: Body, grace: Duration, rate: u64) -> Self {
        MinRateBody {
            inner,
            grace,
            rate,
            start: None,
            received: 0,
            sleep: None,
        }
    }

    fn deadline(&self, start: Instant) -> Instant {
        let allowed = if self.rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(self.received as f64 / self.rate as f64)
        };
        start + self.grace + allowed
    }
}

impl http_body::Body for MinRateBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let start = *this.start.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.grace.is_zero() && this.rate == 0 {
                    return Poll::Pending;
                }
                let deadline = this.deadline(start);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTooSlow {
                        received: this.received,
                        elapsed: start.elapsed(),
                        rate: this.rate,
                        grace: this.grace,
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_that_stops_arriving_fails_after_the_grace_period() {
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, axum::Error>>(4);
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"abcd"))))
            .expect("send");
        let body = Body::new(http_body_util::StreamBody::new(rx));
        let mut b = MinRateBody::new(body, Duration::from_millis(50), 1000);
        let first = b.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data").len(), 4);
        // 4 bytes at 1000 bytes/s after 50 ms of grace: the next frame must come within 54 ms
        let e = b.frame().await.expect("an error").expect_err("too slow");
        assert!(is_too_slow(&e), "{e}");
        assert!(e.to_string().contains("too slowly"), "{e}");
        drop(tx);
    }

    #[tokio::test]
    async fn a_complete_body_passes() {
        let body = Body::from("hello");
        let b = MinRateBody::new(body, Duration::from_secs(1), 1 << 20);
        let bytes = b.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }
}
