//! The JSONL source: files in turn, positions as (file index, line number), batches bounded by
//! `max`, restarts that skip what was read, a followed file's new lines, and unreadable files.

use kiln_learn::source::jsonl::JsonlSource;
use kiln_learn::source::{Position, Source};
use std::io::Write;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Every event until the end: (file, line, text).
async fn drain(src: &mut JsonlSource, max: usize) -> Vec<(i32, i64, String)> {
    let mut out = Vec::new();
    while let Some(b) = src.next_batch(max, WAIT).await.unwrap() {
        assert!(b.len() <= max, "{} > {max}", b.len());
        for (p, bytes) in b.iter() {
            assert_eq!(p.stream, 0);
            out.push((
                p.partition,
                p.offset,
                String::from_utf8(bytes.to_vec()).unwrap(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn files_are_read_in_turn_with_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, "{\"n\":1}\n\n   \n{\"n\":2}\r\n").unwrap();
    std::fs::write(&b, "{\"n\":3}\n{\"n\":4}").unwrap();
    let paths = [a.display().to_string(), b.display().to_string()];
    let mut src = JsonlSource::open(&paths, false);
    assert_eq!(src.streams(), ["jsonl"]);
    let got = drain(&mut src, 1).await;
    let want = [
        (0, 1, "{\"n\":1}"),
        (0, 4, "{\"n\":2}"),
        (1, 1, "{\"n\":3}"),
        (1, 2, "{\"n\":4}"),
    ];
    let want: Vec<(i32, i64, String)> = want
        .iter()
        .map(|(f, l, t)| (*f, *l, t.to_string()))
        .collect();
    assert_eq!(got, want);
    // ended stays ended; commit is a no-op
    assert!(src.next_batch(10, WAIT).await.unwrap().is_none());
    src.commit(&[Position {
        stream: 0,
        partition: 1,
        offset: 2,
    }])
    .unwrap();

    // a restart skips the lines before its positions
    let start = [
        Position {
            stream: 0,
            partition: 0,
            offset: 4,
        },
        Position {
            stream: 0,
            partition: 1,
            offset: 2,
        },
    ];
    let mut src = JsonlSource::starting_at(&paths, false, &start);
    let got: Vec<i64> = drain(&mut src, 100).await.iter().map(|e| e.1).collect();
    assert_eq!(got, [4, 2]);
}

#[tokio::test]
async fn large_files_come_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let text: String = (1..=5000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(&a, text).unwrap();
    let mut src = JsonlSource::open(&[a.display().to_string()], false);
    let got = drain(&mut src, 700).await;
    assert_eq!(got.len(), 5000);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, e)| e.1 == i as i64 + 1 && e.2 == format!("{{\"n\":{}}}", i + 1)));
}

#[tokio::test]
async fn a_missing_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    std::fs::write(&a, "{}\n").unwrap();
    let missing = dir.path().join("missing.jsonl").display().to_string();
    let mut src = JsonlSource::open(&[a.display().to_string(), missing.clone()], false);
    let mut seen = 0;
    let e = loop {
        match src.next_batch(10, WAIT).await {
            Ok(Some(b)) => seen += b.len(),
            Ok(None) => panic!("an error expected"),
            Err(e) => break e,
        }
    };
    assert_eq!(seen, 1);
    assert!(e.to_string().contains(&missing), "{e}");
}

#[tokio::test]
async fn a_followed_file_gives_appended_lines() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    std::fs::write(&a, "{\"n\":1}\n").unwrap();
    let mut src = JsonlSource::open(&[a.display().to_string()], true);
    let mut got = Vec::new();
    let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
    // a line is handed out only once its newline is written
    f.write_all(b"{\"n\":").unwrap();
    f.flush().unwrap();
    let mut appended = false;
    let deadline = Instant::now() + WAIT;
    while got.len() < 2 {
        assert!(Instant::now() < deadline, "appended line not seen: {got:?}");
        let b = src
            .next_batch(10, Duration::from_millis(50))
            .await
            .unwrap()
            .expect("followed");
        got.extend(
            b.iter()
                .map(|(p, t)| (p.offset, String::from_utf8(t.to_vec()).unwrap())),
        );
        if !got.is_empty() && !appended {
            f.write_all(b"2}\n").unwrap();
            f.flush().unwrap();
            appended = true;
        }
    }
    assert_eq!(
        got,
        [(1, "{\"n\":1}".to_string()), (2, "{\"n\":2}".to_string())]
    );
}
