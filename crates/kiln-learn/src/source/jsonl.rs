//! JSONL files and stdin (`[sources] jsonl`): one event per line, files read in turn on a
//! thread of their own, handed to the learner in batches.
//!
//! An event's position is stream 0 (`"jsonl"`), partition = the file's index in the list,
//! offset = its 1-based line number. Blank lines are skipped (their numbers still count); a
//! trailing `\r` is removed. The source ends after the last file, unless it follows: then it
//! waits at the end of the last file for lines appended to it (a line is taken only once its
//! `\n` is written). A file that cannot be opened or read ends the source with an error naming
//! it. [`JsonlSource::starting_at`] skips the lines before given positions, for a restart that
//! resumes from a checkpoint. Committing is a no-op: files keep their lines.

use super::{EventBatch, Position, Source};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Lines per batch sent from the reading thread.
const CHUNK_LINES: usize = 1024;
/// Batches the reading thread may run ahead.
const CHANNEL_DEPTH: usize = 8;
/// How often a followed file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Events from JSONL files or stdin.
#[derive(Debug)]
pub struct JsonlSource {
    streams: Vec<String>,
    rx: mpsc::Receiver<Result<EventBatch>>,
    /// A batch received but not wholly handed out, and how far it was.
    rest: Option<(EventBatch, usize)>,
    /// An error met after events that were handed out first.
    error: Option<Error>,
    ended: bool,
}

impl JsonlSource {
    /// Reads `paths` in turn (`-` is stdin); with `follow`, waits at the end of the last one.
    pub fn open(paths: &[String], follow: bool) -> Self {
        Self::starting_at(paths, follow, &[])
    }

    /// As [`open`](Self::open), skipping in each file the lines before the given positions
    /// (per partition, the first line to read).
    pub fn starting_at(paths: &[String], follow: bool, start: &[Position]) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let paths = paths.to_vec();
        let start: HashMap<i32, i64> = start.iter().map(|p| (p.partition, p.offset)).collect();
        std::thread::Builder::new()
            .name("kiln-learn-jsonl".into())
            .spawn(move || read_all(&paths, follow, &start, &tx))
            .expect("spawn the JSONL reader thread");
        JsonlSource {
            streams: vec!["jsonl".into()],
            rx,
            rest: None,
            error: None,
            ended: false,
        }
    }
}

impl Source for JsonlSource {
    fn streams(&self) -> &[String] {
        &self.streams
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Option<EventBatch>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut out = EventBatch::new();
        let max = max.max(1);
        let mut waited = false;
        while out.len() < max {
            if self.rest.is_none() && !self.ended {
                let got = if out.is_empty() && !waited {
                    waited = true;
                    match tokio::time::timeout(wait, self.rx.recv()).await {
                        Ok(v) => v,
                        Err(_) => break,
                    }
                } else {
                    match self.rx.try_recv() {
                        Ok(v) => Some(v),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    }
                };
                match got {
                    Some(Ok(b)) => self.rest = Some((b, 0)),
                    Some(Err(e)) => {
                        self.ended = true;
                        if out.is_empty() {
                            return Err(e);
                        }
                        self.error = Some(e);
                        break;
                    }
                    None => self.ended = true,
                }
            }
            let Some((batch, next)) = &mut self.rest else {
                break;
            };
            while *next < batch.len() && out.len() < max {
                let (p, bytes) = batch.get(*next);
                out.push(p, bytes);
                *next += 1;
            }
            if *next == batch.len() {
                self.rest = None;
            }
        }
        if out.is_empty() && self.ended && self.rest.is_none() {
            return Ok(None);
        }
        Ok(Some(out))
    }

    fn commit(&mut self, _positions: &[Position]) -> Result<()> {
        Ok(())
    }
}

/// The reading thread: every file in turn, batches sent until the receiver goes away.
fn read_all(
    paths: &[String],
    follow: bool,
    start: &HashMap<i32, i64>,
    tx: &mpsc::Sender<Result<EventBatch>>,
) {
    for (i, path) in paths.iter().enumerate() {
        let last = i + 1 == paths.len();
        let reader: Box<dyn Read> = if path == "-" {
            Box::new(std::io::stdin())
        } else {
            match std::fs::File::open(path) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    let _ = tx.blocking_send(Err(Error::io(PathBuf::from(path), e)));
                    return;
                }
            }
        };
        let first = start.get(&(i as i32)).copied().unwrap_or(0);
        let follow = follow && last && path != "-";
        if let Err(e) = read_file(reader, i as i32, first, follow, tx) {
            let _ = tx.blocking_send(Err(Error::io(PathBuf::from(path), e)));
            return;
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Sends the lines of one file; `Ok` also when the receiver went away.
fn read_file(
    reader: Box<dyn Read>,
    partition: i32,
    first_line: i64,
    follow: bool,
    tx: &mpsc::Sender<Result<EventBatch>>,
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(1 << 16, reader);
    let mut line = Vec::with_capacity(1024);
    let mut batch = EventBatch::new();
    let mut number: i64 = 0;
    loop {
        let n = r.read_until(b'\n', &mut line)?;
        let complete = line.last() == Some(&b'\n');
        if n == 0 || (follow && !complete) {
            // the end, for now: hand out what was read, then stop or wait for more
            if !batch.is_empty() && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                return Ok(());
            }
            if !follow {
                if line.is_empty() {
                    return Ok(());
                }
            } else {
                if tx.is_closed() {
                    return Ok(());
                }
                #[allow(clippy::disallowed_methods)] // a reader thread, not a runtime thread
                std::thread::sleep(FOLLOW_POLL);
                continue;
            }
        }
        number += 1;
        let mut text: &[u8] = &line;
        while let [rest @ .., b'\n' | b'\r'] = text {
            text = rest;
        }
        if number >= first_line && !text.iter().all(u8::is_ascii_whitespace) {
            let p = Position {
                stream: 0,
                partition,
                offset: number,
            };
            batch.push(p, text);
            if batch.len() >= CHUNK_LINES
                && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err()
            {
                return Ok(());
            }
        }
        let at_end = !complete;
        line.clear();
        if at_end {
            // a last line without '\n' (not followed)
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(batch));
            }
            return Ok(());
        }
    }
}
