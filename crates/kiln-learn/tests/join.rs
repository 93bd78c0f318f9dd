//! The joiner with an injected `now`: windows closing in event time, positives at once, late,
//! orphan, duplicate and ignored actions, actions before their impression, out-of-order
//! timestamps, the idle watermark, and the memory cap with its exact accounting.

use kiln_learn::config::{JoinConfig, LabelsConfig};
use kiln_learn::event::Action;
use kiln_learn::join::{JoinState, JoinStats};
use kiln_learn::source::Position;
use kiln_learn::Sample;

const WINDOW: u64 = 1000;
const HOLD: u64 = 500;

fn join_with(cap: u64, hold: u64) -> JoinState {
    let cfg = JoinConfig {
        window_ms: WINDOW,
        memory_cap_bytes: cap,
        orphan_hold_ms: hold,
    };
    let labels = LabelsConfig {
        positive: vec!["click".into(), "buy".into()],
    };
    JoinState::new(&cfg, &labels)
}

fn join() -> JoinState {
    join_with(1 << 30, HOLD)
}

fn imp(id: &str, ts_ms: u64) -> Sample {
    Sample {
        id: id.into(),
        ts_ms,
        label: false,
        keys: vec![vec![1, 2, 3], vec![]],
        dense: vec![0.5; 2],
        seen_ms: ts_ms,
    }
}

fn pos(offset: i64) -> Position {
    Position {
        stream: 0,
        partition: 0,
        offset,
    }
}

fn act(j: &mut JoinState, id: &str, ts_ms: u64, name: &str) -> Vec<(String, bool)> {
    let a = Action {
        id: id.into(),
        ts_ms,
        action: name.into(),
    };
    labels(j.insert_action(&a, pos(0), ts_ms))
}

fn add(j: &mut JoinState, id: &str, ts_ms: u64) -> Vec<(String, bool)> {
    labels(j.insert_impression(imp(id, ts_ms), pos(ts_ms as i64), ts_ms))
}

fn labels(v: Vec<Sample>) -> Vec<(String, bool)> {
    v.into_iter().map(|s| (s.id, s.label)).collect()
}

fn l(id: &str, label: bool) -> (String, bool) {
    (id.to_string(), label)
}

#[test]
fn a_window_closes_as_a_negative() {
    let mut j = join();
    assert!(add(&mut j, "a", 0).is_empty());
    assert!(add(&mut j, "b", 999).is_empty());
    assert!(j.expire(999).is_empty());
    // a non-positive action moves event time too, and is ignored
    assert!(act(&mut j, "b", 1000, "view").is_empty());
    let out = j.expire(1000);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].id.as_str(), out[0].label, out[0].ts_ms),
        ("a", false, 0)
    );
    assert_eq!(out[0].keys, imp("a", 0).keys, "the sample comes back whole");
    assert_eq!(labels(j.expire(1999)), [l("b", false)]);
    let s = j.stats();
    assert_eq!(
        (s.impressions, s.negatives, s.positives, s.ignored_actions),
        (2, 2, 0, 1)
    );
    assert_eq!((s.pending, s.watermark_ms), (0, 1999));
}

#[test]
fn a_positive_is_emitted_at_once_and_only_once() {
    let mut j = join();
    add(&mut j, "a", 0);
    assert_eq!(act(&mut j, "a", 10, "click"), [l("a", true)]);
    // further positive actions are duplicates, not new samples
    assert!(act(&mut j, "a", 20, "buy").is_empty());
    assert!(act(&mut j, "a", 30, "click").is_empty());
    assert!(act(&mut j, "a", 40, "view").is_empty());
    assert!(j.expire(5000).is_empty());
    let s = j.stats();
    assert_eq!(
        (
            s.positives,
            s.negatives,
            s.duplicate_actions,
            s.ignored_actions
        ),
        (1, 0, 2, 1)
    );
}

#[test]
fn a_positive_after_the_window_is_late() {
    let mut j = join();
    add(&mut j, "a", 0);
    // the action is past the window, even before expire ran
    assert!(act(&mut j, "a", 1500, "click").is_empty());
    assert_eq!(labels(j.expire(1500)), [l("a", false)]);
    // and after the close (the id is remembered one more window)
    assert!(act(&mut j, "a", 1600, "click").is_empty());
    let s = j.stats();
    assert_eq!((s.late_actions, s.orphan_actions, s.negatives), (2, 0, 1));
    // once forgotten, an action for it is an orphan
    j.expire(2600);
    act(&mut j, "a", 2700, "click");
    j.expire(3300);
    assert_eq!((j.stats().late_actions, j.stats().orphan_actions), (2, 1));
}

#[test]
fn orphan_actions_are_held_then_counted() {
    let mut j = join();
    assert!(act(&mut j, "x", 0, "click").is_empty());
    assert_eq!(j.stats().held_actions, 1);
    assert!(j.expire(499).is_empty());
    assert_eq!(j.stats().orphan_actions, 0);
    j.expire(500);
    let s = j.stats();
    assert_eq!((s.orphan_actions, s.held_actions), (1, 0));

    // no hold: an orphan at once
    let mut j = join_with(1 << 30, 0);
    act(&mut j, "x", 0, "click");
    assert_eq!((j.stats().orphan_actions, j.stats().held_actions), (1, 0));
}

#[test]
fn an_action_before_its_impression_joins_when_it_comes() {
    let mut j = join();
    assert!(act(&mut j, "b", 100, "click").is_empty());
    assert!(
        act(&mut j, "b", 120, "click").is_empty(),
        "a second one is a duplicate"
    );
    assert_eq!(add(&mut j, "b", 90), [l("b", true)]);
    let s = j.stats();
    assert_eq!(
        (
            s.early_actions,
            s.duplicate_actions,
            s.held_actions,
            s.positives
        ),
        (1, 1, 0, 1)
    );
    j.expire(10_000);
    assert_eq!(j.stats().orphan_actions, 0);
}

#[test]
fn out_of_order_timestamps_close_by_the_watermark() {
    let mut j = join();
    add(&mut j, "c", 500);
    add(&mut j, "d", 200);
    add(&mut j, "e", 350);
    assert_eq!(j.stats().watermark_ms, 500);
    add(&mut j, "f", 1360);
    // d (200) and e (350) are due at 1200 and 1350; c (500) not before 1500
    assert_eq!(labels(j.expire(1360)), [l("d", false), l("e", false)]);
    // an impression already outside the window when it arrives is dropped
    assert!(add(&mut j, "g", 300).is_empty());
    assert_eq!(j.stats().late_impressions, 1);
    assert_eq!(labels(j.expire(1500)), [l("c", false)]);
    // a repeated id is dropped
    add(&mut j, "f", 1400);
    assert_eq!(j.stats().duplicate_impressions, 1);
}

#[test]
fn event_time_from_the_future_is_clamped_and_idle_time_moves_on() {
    let mut j = join();
    // a producer clock an hour ahead does not close anything by itself
    j.insert_impression(imp("future", 3_600_000), pos(0), 0);
    add(&mut j, "a", 0);
    assert_eq!(j.stats().watermark_ms, 0);
    assert!(j.expire(999).is_empty(), "999 ms of idle time");
    assert_eq!(labels(j.expire(1000)), [l("a", false)]);
}

#[test]
fn the_memory_cap_closes_the_oldest_impressions_early() {
    let one = JoinState::impression_bytes(&imp("a", 0));
    assert!(one > 100, "{one}");
    let mut j = join_with(3 * one, HOLD);
    add(&mut j, "a", 30);
    add(&mut j, "b", 10);
    add(&mut j, "c", 20);
    assert_eq!(j.memory_bytes(), 3 * one, "exact accounting");
    // a fourth: the oldest (b, ts 10) closes early, as a negative
    assert_eq!(add(&mut j, "d", 40), [l("b", false)]);
    assert_eq!(j.memory_bytes(), 3 * one);
    // an impression older than all the others is the one to go
    assert_eq!(add(&mut j, "e", 5), [l("e", false)]);
    let s = j.stats();
    assert_eq!((s.capped, s.negatives, s.pending), (2, 2, 3));

    // closed-id records and held actions go before impressions
    assert_eq!(act(&mut j, "c", 41, "click"), [l("c", true)]);
    let closed = JoinState::id_bytes("c", false);
    assert_eq!(j.memory_bytes(), 2 * one + closed);
    add(&mut j, "f", 50);
    assert_eq!(j.memory_bytes(), 3 * one, "the record of c went first");
    assert_eq!(j.stats().capped, 2);
    // a held action over the cap is dropped (an orphan) before any impression closes
    assert!(act(&mut j, "zz", 51, "click").is_empty());
    let s = j.stats();
    assert_eq!((s.capped, s.orphan_actions, s.held_actions), (2, 1, 0));

    // with everything closed and forgotten, nothing is held
    assert_eq!(j.expire(10_000).len(), 3);
    assert!(
        j.memory_bytes() > 0,
        "their ids are remembered one more window"
    );
    j.expire(10_000 + WINDOW);
    assert_eq!(j.memory_bytes(), 0);
    assert_eq!(j.stats().memory_bytes, 0);
}

#[test]
fn flush_closes_everything_and_positions_are_reported() {
    let mut j = join();
    add(&mut j, "a", 5);
    add(&mut j, "b", 7);
    let a = Action {
        id: "x".into(),
        ts_ms: 8,
        action: "click".into(),
    };
    j.insert_action(&a, pos(99), 8);
    let mut held: Vec<i64> = j.held_positions().map(|p| p.offset).collect();
    held.sort();
    assert_eq!(held, [5, 7, 99]);
    assert_eq!(labels(j.flush()), [l("a", false), l("b", false)]);
    let s: JoinStats = j.stats();
    assert_eq!(
        (s.negatives, s.orphan_actions, s.pending, s.held_actions),
        (2, 1, 0, 0)
    );
    assert_eq!(j.held_positions().count(), 0);
}

#[test]
fn expire_before_any_event_closes_nothing() {
    let mut j = join();
    // a wall clock far past every event's time: without an event there is no watermark yet
    assert!(j.expire(1_800_000_000_000).is_empty());
    assert!(add(&mut j, "a", 1_000).is_empty());
    assert_eq!(j.stats().late_impressions, 0, "{:?}", j.stats());
    assert_eq!(act(&mut j, "a", 1_200, "click"), vec![l("a", true)]);
}

/// After a restart the held impressions are read again, but events of the other partition
/// (actions timed after them) may be read first and move the watermark past their windows: a
/// readmitted impression is then still learned, where a new one that late is dropped.
#[test]
fn a_readmitted_impression_is_kept_though_the_watermark_passed_its_window() {
    let mut j = join();
    // the actions partition is read first on replay: its clicks move the watermark to 5000
    assert!(act(&mut j, "later", 5000, "click").is_empty());
    assert!(act(&mut j, "clicked", 4990, "click").is_empty());
    assert_eq!(j.stats().watermark_ms, 5000);
    // a new impression from before the watermark's window is late and dropped
    assert!(add(&mut j, "new", 100).is_empty());
    assert_eq!(j.stats().late_impressions, 1);
    // the impressions the previous run held are admitted: without an action, a negative at
    // the next expiry; with its click held, a positive at once
    let kept = j.readmit_impression(imp("held", 100), pos(7), 5000);
    assert!(kept.is_empty(), "waits for the next expiry");
    assert_eq!(labels(j.expire(5000)), [l("held", false)]);
    let clicked = j.readmit_impression(imp("clicked", 4500), pos(8), 5000);
    assert_eq!(labels(clicked), [l("clicked", true)]);
    assert_eq!(j.stats().late_impressions, 1);
    // and a readmitted impression is still only learned once
    assert!(j
        .readmit_impression(imp("held", 100), pos(7), 5000)
        .is_empty());
    assert_eq!(j.stats().duplicate_impressions, 1);
}
