//! Tables behind kiln-core's sparse-parameter API
//! ([`kiln_core::backend::SparseParameters`]): the decoding of a delta sent to a served table
//! and the acknowledgement of an applied one, shared by every server-side owner of tables (the
//! recsys backend, the pipelines' retrieve step), so that they refuse and acknowledge alike.

use crate::{ApplyOutcome, Delta};
use kiln_core::backend::DeltaAck;
use kiln_core::{Error, Result};

/// Decodes `encoded`, a delta sent to the served table `table` whose store is named `stored`.
/// A delta naming neither is refused (it was meant for another table); the table name of the
/// returned delta is cleared, so the store it is applied to does not check it again.
pub fn decode_delta_for(table: &str, stored: &str, encoded: &[u8]) -> Result<Delta> {
    let mut delta = Delta::decode(encoded).map_err(|e| Error::invalid(format!("delta: {e}")))?;
    if !delta.table.is_empty() && delta.table != table && delta.table != stored {
        return Err(Error::invalid(format!(
            "delta: it is for table '{}', sent to table '{table}'",
            delta.table
        )));
    }
    delta.table.clear();
    Ok(delta)
}

impl ApplyOutcome {
    /// The acknowledgement of this outcome; `last_sequence` is the source's last applied
    /// sequence number after it (a duplicate reports the one it found).
    pub fn ack(self, last_sequence: u64) -> DeltaAck {
        match self {
            ApplyOutcome::Applied {
                rows,
                inserted,
                removed,
                evicted,
                gap,
            } => DeltaAck {
                applied: true,
                rows: rows as u64,
                inserted: inserted as u64,
                removed: removed as u64,
                evicted: evicted as u64,
                last_sequence,
                gap: gap.map(|g| (g.expected, g.got)),
            },
            ApplyOutcome::Duplicate { last_applied } => DeltaAck {
                applied: false,
                last_sequence: last_applied,
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(table: &str) -> Vec<u8> {
        Delta {
            source: "s".into(),
            table: table.into(),
            seq: 1,
            created_ms: 0,
            dim: 1,
            keys: vec![7],
            values: vec![0.5],
            tombstones: vec![],
        }
        .encode()
    }

    #[test]
    fn a_delta_for_another_table_is_refused_and_its_own_name_is_cleared() {
        for name in ["", "user", "m/user"] {
            let d = decode_delta_for("user", "m/user", &delta(name)).expect(name);
            assert!(d.table.is_empty());
            assert_eq!(d.keys, [7]);
        }
        let e = decode_delta_for("user", "m/user", &delta("item")).expect_err("other table");
        assert!(
            e.message
                .contains("it is for table 'item', sent to table 'user'"),
            "{}",
            e.message
        );
        let e = decode_delta_for("user", "m/user", b"not a delta").expect_err("garbage");
        assert!(e.message.starts_with("delta: "), "{}", e.message);
    }

    #[test]
    fn a_duplicate_acknowledges_the_sequence_it_found() {
        let ack = ApplyOutcome::Duplicate { last_applied: 9 }.ack(12);
        assert_eq!((ack.applied, ack.last_sequence, ack.rows), (false, 9, 0));
        let ack = ApplyOutcome::Applied {
            rows: 3,
            inserted: 2,
            removed: 1,
            evicted: 0,
            gap: None,
        }
        .ack(12);
        assert_eq!(
            ack,
            DeltaAck {
                applied: true,
                rows: 3,
                inserted: 2,
                removed: 1,
                evicted: 0,
                last_sequence: 12,
                gap: None
            }
        );
    }
}
