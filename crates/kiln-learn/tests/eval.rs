//! Progressive-validation metrics against hand-computed values, ties included.

use kiln_learn::eval::{exact_auc, log_loss, Evaluator, LOG_LOSS_EPS};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn exact_auc_by_hand() {
    // the scikit-learn docs example: 3 of 4 (positive, negative) pairs ordered
    let mut v = [(0.1, false), (0.4, false), (0.35, true), (0.8, true)];
    assert_eq!(exact_auc(&mut v), Some(0.75));
    // perfect, and reversed
    assert_eq!(exact_auc(&mut [(0.2, false), (0.9, true)]), Some(1.0));
    assert_eq!(exact_auc(&mut [(0.9, false), (0.2, true)]), Some(0.0));
    // one label only: undefined
    assert_eq!(exact_auc(&mut [(0.2, true), (0.9, true)]), None);
    assert_eq!(exact_auc(&mut []), None);
}

#[test]
fn ties_count_half() {
    // P@0.5 vs N@0.5: 1/2; P@0.5 vs N@0.2: 1; P@0.9 vs both: 2 => 3.5 / 4
    let mut v = [(0.5, true), (0.5, false), (0.2, false), (0.9, true)];
    assert_eq!(exact_auc(&mut v), Some(0.875));
    // everything tied: 0.5 whatever the mix
    let mut v = [
        (0.3, true),
        (0.3, false),
        (0.3, false),
        (0.3, true),
        (0.3, false),
    ];
    assert_eq!(exact_auc(&mut v), Some(0.5));
    // a tie group holding two positives and two negatives between other scores:
    // P@0.9 beats 3 negatives (3); each P@0.6 beats N@0.1 (1) and ties the two N@0.6 (2 x 0.5)
    // => (3 + 2 * 2) / (3 * 3) = 7 / 9
    let mut v = [
        (0.6, true),
        (0.1, false),
        (0.6, false),
        (0.9, true),
        (0.6, true),
        (0.6, false),
    ];
    assert!(close(exact_auc(&mut v).unwrap(), 7.0 / 9.0));
}

#[test]
fn log_loss_by_hand_and_clipped() {
    assert!(close(log_loss(0.8, true), 0.223_143_551_314_209_7));
    assert!(close(log_loss(0.3, false), 0.356_674_943_938_732_4));
    // a confident mistake is clipped, not infinite
    let worst = -(LOG_LOSS_EPS.ln());
    assert!(close(log_loss(0.0, true), worst));
    assert!(close(log_loss(1.0, false), worst));
    assert!(close(worst, 16.118_095_650_958_32));
    assert!(log_loss(1.0, true) < 1e-6);
}

#[test]
fn cumulative_and_windowed() {
    let mut e = Evaluator::new(3);
    let r = e.report();
    assert_eq!((r.samples, r.window_samples), (0, 0));
    assert!(r.log_loss.is_nan() && r.window_log_loss.is_nan());
    assert_eq!((r.auc, r.window_auc), (None, None));

    // 5 samples; the window keeps the last 3
    let stream = [
        (0.9f32, false),
        (0.2, true),
        (0.8, true),
        (0.4, false),
        (0.6, true),
    ];
    for &(p, y) in &stream {
        e.observe(p, y);
    }
    let r = e.report();
    assert_eq!((r.samples, r.positives, r.window_samples), (5, 3, 3));
    // cumulative: P 0.2, 0.8, 0.6 against N 0.9, 0.4: 0.2 beats none, 0.8 and 0.6 beat 0.4 => 2/6
    assert!(close(r.auc.unwrap(), 2.0 / 6.0));
    assert_eq!(r.auc_error_bound, 0.0);
    let want: f64 = stream
        .iter()
        .map(|&(p, y)| log_loss(p as f64, y))
        .sum::<f64>()
        / 5.0;
    assert!(close(r.log_loss, want));
    // window: (0.8 P), (0.4 N), (0.6 P) => 1
    assert_eq!(r.window_auc, Some(1.0));
    let want: f64 = stream[2..]
        .iter()
        .map(|&(p, y)| log_loss(p as f64, y))
        .sum::<f64>()
        / 3.0;
    assert!(close(r.window_log_loss, want));
}

#[test]
fn histogram_auc_counts_a_shared_bucket_as_a_tie_and_bounds_the_error() {
    let mut e = Evaluator::new(10);
    // equal scores: exact and histogram agree (a tie is a tie), the bound is 1/2 x 1/4
    e.observe_all(&[0.5, 0.5, 0.2, 0.9], [true, false, false, true]);
    let r = e.report();
    assert_eq!(r.window_auc, Some(0.875));
    assert!(close(r.auc.unwrap(), 0.875));
    assert!(close(r.auc_error_bound, 0.125));

    // distinct scores within 2^-16 of each other: exact says 1, the histogram a tie
    let mut e = Evaluator::new(10);
    e.observe_all(&[0.500_010, 0.500_005], [true, false]);
    let r = e.report();
    assert_eq!(r.window_auc, Some(1.0));
    assert_eq!(r.auc, Some(0.5));
    assert_eq!(r.auc_error_bound, 0.5);
}

#[test]
fn histogram_auc_is_within_its_bound_of_the_exact_value() {
    // a long pseudo-random stream, the window as large as the stream so it is exact
    let n = 20_000;
    let mut e = Evaluator::new(n);
    let mut s = 0x1234_5678_9abc_def0u64;
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let u = (s >> 11) as f64 / (1u64 << 53) as f64;
        // scores cluster (a quarter land on a few exact values) so buckets are shared
        let p = if s.is_multiple_of(4) {
            (u * 8.0).floor() / 8.0
        } else {
            u
        };
        let label = (s >> 3) % 1000 < (p * 1000.0) as u64;
        e.observe(p as f32, label);
    }
    let r = e.report();
    let (h, x) = (r.auc.unwrap(), r.window_auc.unwrap());
    assert!(
        (h - x).abs() <= r.auc_error_bound + 1e-12,
        "{h} vs {x}, bound {}",
        r.auc_error_bound
    );
    assert!(r.auc_error_bound < 0.01, "{}", r.auc_error_bound);
    assert!(x > 0.6, "{x}");
}
