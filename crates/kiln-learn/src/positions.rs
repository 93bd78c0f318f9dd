//! Source positions as a checkpoint records them ([`crate::checkpoint::PartitionState`]): per
//! partition, the position after the last event read, and the positions of the events the
//! joiner still holds ([`crate::join::JoinState::held_positions`]: waiting impressions and
//! actions waiting for their impression), from which a restart rebuilds the joiner.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::checkpoint::PartitionState;
use crate::source::Position;

/// What was read, per partition.
#[derive(Debug, Default)]
pub struct ReadPositions {
    names: HashMap<(u16, i32), String>,
    end: BTreeMap<String, u64>,
}

impl ReadPositions {
    /// Records that the event at `pos` (named `partition`) was read.
    pub fn read(&mut self, partition: &str, pos: Position) {
        let key = (pos.stream, pos.partition);
        self.names
            .entry(key)
            .or_insert_with(|| partition.to_string());
        let end = self.end.entry(partition.to_string()).or_insert(0);
        *end = (*end).max(pos.offset.max(0) as u64 + 1);
    }

    /// Per partition: where to resume (the oldest held event, else the end), the held
    /// positions, and the end.
    pub fn state(&self, held: impl Iterator<Item = Position>) -> BTreeMap<String, PartitionState> {
        let mut by: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for p in held {
            if let Some(name) = self.names.get(&(p.stream, p.partition)) {
                by.entry(name.clone())
                    .or_default()
                    .insert(p.offset.max(0) as u64);
            }
        }
        self.end
            .iter()
            .map(|(name, &end)| {
                let held: Vec<u64> = by.remove(name).unwrap_or_default().into_iter().collect();
                let state = PartitionState {
                    resume: held.first().copied().unwrap_or(end),
                    held,
                    end,
                };
                (name.clone(), state)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: u16, offset: i64) -> Position {
        Position {
            stream,
            partition: 0,
            offset,
        }
    }

    #[test]
    fn resume_at_the_oldest_held_event() {
        let mut r = ReadPositions::default();
        for o in 0..5 {
            r.read("imp/0", at(0, o));
        }
        r.read("act/0", at(1, 0));
        let s = r.state([at(0, 3), at(0, 1)].into_iter());
        assert_eq!(
            s["imp/0"],
            PartitionState {
                resume: 1,
                held: vec![1, 3],
                end: 5
            }
        );
        assert_eq!(
            s["act/0"],
            PartitionState {
                resume: 1,
                held: vec![],
                end: 1
            }
        );
    }
}
