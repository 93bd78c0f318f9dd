//! Admission before parsing: an inference request is refused as soon as its route and headers
//! show it cannot be served now, before its body is read or decoded, so a refusal costs
//! microseconds however loaded the server is.
//!
//! The order, for HTTP: path and headers checked (400), model and version looked up (404), a
//! place in the version's queue taken (429 when the queued requests and the places other
//! requests hold fill it), the server-wide budget of in-flight requests and request bytes
//! reserved from `Content-Length` (429), then the body is read (413 over the limit, 408 when
//! it arrives too slowly) and decoded (400), and the place is given up just before the request
//! is queued. So a request admitted at its headers finds room in the queue: no body is read
//! and decoded only to be refused (`reason="queue_full_late"` counts any that still are).
//! A body still incomplete after [`SLOT_GRACE`] gives its place back (the request is then
//! checked for room again when it is queued), so a client trickling its body cannot hold the
//! queue.
//! gRPC checks the queue for room once tonic has decoded the message, before its tensors are
//! converted. The budget reservation is held until the response is produced.

use kiln_core::{Error, ErrorCode, Result};
use kiln_runtime::scheduler::QueueSlot;
use kiln_runtime::ServedVersion;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request admitted at its headers keeps its place in the queue while its body is
/// still arriving. Bodies that come with their headers, or within a few round trips on a
/// local network, are read well within it.
pub const SLOT_GRACE: std::time::Duration = std::time::Duration::from_millis(10);

/// Bytes are reserved from the budget in units of this many bytes (a semaphore counts at
/// most `u32::MAX` permits per acquisition).
const UNIT: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The server-wide in-flight budget and the early queue check, shared by HTTP and gRPC.
pub struct Admission {
    /// In-flight inference requests; `None` = no limit.
    requests: Option<Arc<Semaphore>>,
    /// The request budget, to name it in refusals.
    max_requests: usize,
    /// In-flight request bytes, in [`UNIT`]s; `None` = no limit.
    bytes: Option<Arc<Semaphore>>,
    /// The byte budget, in [`UNIT`]s.
    max_units: usize,
    /// Refusals by reason (`queue_full`, `requests`, `bytes`).
    rejected: Family<ReasonLabels, Counter>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(0, 0)
    }
}

/// A reservation in the in-flight budget, and the place in the version's queue while the
/// body is read; released on drop.
#[derive(Default)]
pub struct Ticket {
    _request: Option<OwnedSemaphorePermit>,
    bytes: Option<OwnedSemaphorePermit>,
    slot: Option<QueueSlot>,
}

impl Ticket {
    /// Gives up the place in the queue: call it just before the request is queued, so the
    /// place becomes its room there.
    pub fn release_slot(&mut self) {
        self.slot = None;
    }
}

impl Admission {
    /// A budget of `max_requests` in-flight inference requests and `max_bytes` in-flight request
    /// bytes; 0 turns either off.
    pub fn new(max_requests: usize, max_bytes: usize) -> Self {
        let max_units = max_bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Admission {
            requests: (max_requests > 0)
                .then(|| Arc::new(Semaphore::new(max_requests.min(Semaphore::MAX_PERMITS)))),
            max_requests,
            bytes: (max_units > 0).then(|| Arc::new(Semaphore::new(max_units))),
            max_units,
            rejected: Family::default(),
        }
    }

    /// Registers `kiln_server_admission_rejected_total{reason}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kiln_server_admission_rejected",
            "Inference requests refused before their body was read or decoded, by reason",
            self.rejected.clone(),
        );
    }

    fn refuse(&self, reason: &'static str, message: String) -> Error {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
        Error::new(ErrorCode::Overloaded, message)
    }

    fn queue_full(&self, v: &ServedVersion) -> Error {
        let max = v.config.dynamic_batching.max_queue_size;
        self.refuse(
            "queue_full",
            format!(
                "model '{}' version {}: queue full ({max} requests waiting): server \
                 overloaded, retry later",
                v.name, v.version
            ),
        )
    }

    /// Refuses at once when `v`'s queue is full; the scheduler refuses again if it filled
    /// between this check and the request being queued.
    pub fn check_queue(&self, v: &ServedVersion) -> Result<()> {
        if v.queue_len() >= v.config.dynamic_batching.max_queue_size {
            return Err(self.queue_full(v));
        }
        Ok(())
    }

    /// Counts `e` when it is the scheduler refusing, for a full queue, a request admitted
    /// earlier: one whose body was read and decoded for nothing.
    pub fn note_late_refusal(&self, e: &Error) {
        if e.code == ErrorCode::Overloaded {
            self.rejected
                .get_or_create(&ReasonLabels {
                    reason: "queue_full_late",
                })
                .inc();
        }
    }

    /// As [`Admission::admit`], but takes a place in `v`'s queue instead of only checking for
    /// room: the place is held (and counts as taken for every later request) until
    /// `Ticket::release_slot` or the ticket's drop. For a request whose body is still to be
    /// read and decoded.
    pub fn admit_with_slot(&self, v: &ServedVersion, bytes: Option<usize>) -> Result<Ticket> {
        let Some(slot) = v.reserve_slot() else {
            let e = self.queue_full(v);
            v.record_refused(&e);
            return Err(e);
        };
        let mut t = self.admit_budget(v, bytes)?;
        t.slot = Some(slot);
        Ok(t)
    }

    /// Checks `v`'s queue, then reserves one request and `bytes` (when known) in the
    /// server-wide budget. A request larger than the whole byte budget reserves all of it.
    /// A refusal counts as a failure of `v` in its statistics and metrics, as a refusal by
    /// its scheduler does.
    pub fn admit(&self, v: &ServedVersion, bytes: Option<usize>) -> Result<Ticket> {
        self.try_admit(v, bytes)
            .inspect_err(|e| v.record_refused(e))
    }

    fn try_admit(&self, v: &ServedVersion, bytes: Option<usize>) -> Result<Ticket> {
        self.check_queue(v)?;
        self.try_budget(bytes)
    }

    /// Reserves one request and `bytes` in the server-wide budget; a refusal counts against `v`.
    fn admit_budget(&self, v: &ServedVersion, bytes: Option<usize>) -> Result<Ticket> {
        self.try_budget(bytes).inspect_err(|e| v.record_refused(e))
    }

    fn try_budget(&self, bytes: Option<usize>) -> Result<Ticket> {
        let request = match &self.requests {
            None => None,
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| {
                self.refuse(
                    "requests",
                    format!(
                        "server overloaded: {} inference requests in flight (--max-inflight-requests), \
                         retry later",
                        self.max_requests
                    ),
                )
            })?),
        };
        let mut t = Ticket {
            _request: request,
            bytes: None,
            slot: None,
        };
        if let Some(n) = bytes {
            self.add_bytes(&mut t, n)?;
        }
        Ok(t)
    }

    /// Adds `bytes` to a ticket's reservation (for bodies whose length was not declared).
    pub fn add_bytes(&self, t: &mut Ticket, bytes: usize) -> Result<()> {
        let Some(s) = &self.bytes else {
            return Ok(());
        };
        let units = bytes.div_ceil(UNIT).clamp(1, self.max_units);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let permit = s.clone().try_acquire_many_owned(units).map_err(|_| {
            self.refuse(
                "bytes",
                format!(
                    "server overloaded: in-flight request bytes would exceed {} bytes \
                     (--max-inflight-bytes), retry later",
                    self.max_units * UNIT
                ),
            )
        })?;
        match &mut t.bytes {
            Some(p) => p.merge(permit),
            None => t.bytes = Some(permit),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_refuse_beyond_their_size_and_release_on_drop() {
        let a = Admission::new(2, 4 * UNIT);
        let r = a.requests.as_ref().expect("request budget");
        let one = r.clone().try_acquire_owned().expect("first");
        let _two = r.clone().try_acquire_owned().expect("second");
        assert!(r.clone().try_acquire_owned().is_err());
        drop(one);
        assert!(r.clone().try_acquire_owned().is_ok());

        let mut t = Ticket::default();
        a.add_bytes(&mut t, 3 * UNIT).expect("fits");
        let e = a.add_bytes(&mut t, 2 * UNIT).expect_err("over the budget");
        assert_eq!(e.code, ErrorCode::Overloaded);
        assert!(e.message.contains("--max-inflight-bytes"), "{}", e.message);
        a.add_bytes(&mut t, 1).expect("one unit left");
        drop(t);
        // larger than the whole budget: reserves all of it once the rest is free
        let mut t = Ticket::default();
        a.add_bytes(&mut t, 100 * UNIT)
            .expect("clamped to the budget");
    }

    #[test]
    fn zero_turns_budgets_off() {
        let a = Admission::new(0, 0);
        let mut t = Ticket::default();
        a.add_bytes(&mut t, usize::MAX).expect("no byte budget");
        assert!(a.requests.is_none());
    }
}
