//! Contexts: data sent once to each worker that needs it, decoded there
//! once, kept while its handle or maps live, sent again to a replacement,
//! dropped when nobody needs it.

mod common;

use std::path::{Path, PathBuf};

use buckshot::{Error, Pool};
use serde::{Deserialize, Deserializer, Serialize};

/// A table that notes, in files under its `log` directory, each time a
/// worker decodes or drops it (a process other than `parent`).
#[derive(Serialize)]
struct Table {
    log: String,
    parent: u32,
    rows: Vec<u32>,
}

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Table, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            log: String,
            parent: u32,
            rows: Vec<u32>,
        }
        let raw = Raw::deserialize(deserializer)?;
        note(&raw.log, "decoded");
        Ok(Table {
            log: raw.log,
            parent: raw.parent,
            rows: raw.rows,
        })
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if std::process::id() != self.parent {
            note(&self.log, "dropped");
        }
    }
}

/// Appends this process's pid to the file `what` under `dir`.
fn note(dir: &str, what: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(dir).join(what))
        .unwrap();
    // One write per line: with O_APPEND it lands whole, whatever other
    // workers append at the same time (`writeln!` may write in pieces).
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .unwrap();
}

/// The pids noted in `what` under `dir`.
fn noted(dir: &Path, what: &str) -> Vec<u32> {
    std::fs::read_to_string(dir.join(what))
        .unwrap_or_default()
        .lines()
        .map(|pid| pid.parse().unwrap())
        .collect()
}

fn row(table: &Table, index: usize) -> u32 {
    table.rows[index]
}
buckshot::register!(row);

/// A row and the worker that read it.
fn row_and_worker(table: &Table, index: usize) -> (u32, u32) {
    (table.rows[index], std::process::id())
}
buckshot::register!(row_and_worker);

/// Two rows' sum, and the worker that read them.
fn row_sum(table: &Table, a: usize, b: usize) -> (u32, u32) {
    (table.rows[a] + table.rows[b], std::process::id())
}
buckshot::register!(row_sum);

fn row_or_abort(table: &Table, index: usize) -> u32 {
    if index == 3 {
        std::process::abort();
    }
    table.rows[index]
}
buckshot::register!(row_or_abort);

fn plain(x: u32) -> u32 {
    x
}
buckshot::register!(plain);

struct LogDir(PathBuf);

impl LogDir {
    fn new(name: &str) -> LogDir {
        let dir =
            std::env::temp_dir().join(format!("buckshot-context-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        LogDir(dir)
    }

    fn table(&self, rows: u32) -> Table {
        Table {
            log: self.0.to_string_lossy().into_owned(),
            parent: std::process::id(),
            rows: (0..rows).map(|r| r * 10).collect(),
        }
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_context_is_decoded_once_per_worker_whatever_the_inputs() {
    let log = LogDir::new("once");
    let pool = Pool::new(2).unwrap();
    let table = log.table(100);
    let ctx = pool.with_context(&table);
    let out: Vec<(u32, u32)> = ctx
        .map(row_and_worker, (0..4000).map(|i| i % 100))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows: Vec<u32> = out.iter().map(|(row, _)| *row).collect();
    assert_eq!(
        rows,
        (0..4000).map(|i| (i % 100) * 10).collect::<Vec<u32>>()
    );
    let mut served: Vec<u32> = out.iter().map(|(_, worker)| *worker).collect();
    let mut unordered: Vec<(usize, u32)> = ctx
        .map_unordered(row_sum, (0..50).map(|i| (i, i + 1)))
        .unwrap()
        .map(|(index, result)| {
            let (sum, worker) = result.unwrap();
            served.push(worker);
            (index, sum)
        })
        .collect();
    unordered.sort();
    let expected: Vec<(usize, u32)> = (0..50).map(|i| (i, 20 * i as u32 + 10)).collect();
    assert_eq!(unordered, expected);
    let (seventh, worker) = ctx.call(row_and_worker, 7).unwrap();
    assert_eq!(seventh, 70);
    served.push(worker);
    // Every worker that ran an input decoded the table, once; no other did.
    let mut decoded = noted(&log.0, "decoded");
    decoded.sort();
    served.sort();
    served.dedup();
    assert_eq!(
        decoded, served,
        "decoded by {decoded:?}, served by {served:?}"
    );
}

#[test]
fn contexts_made_and_dropped_back_to_back_reach_their_worker() {
    // One worker: each new context goes to it with the FORGET frames of
    // the ones dropped before it.
    let log = LogDir::new("back-to-back");
    let pool = Pool::new(1).unwrap();
    for k in 0..20 {
        let mut table = log.table(0);
        table.rows = vec![k];
        let ctx = pool.with_context(&table);
        assert_eq!(ctx.call(row, 0).unwrap(), k, "context {k}");
    }
    let decoded = noted(&log.0, "decoded");
    assert_eq!(decoded.len(), 20, "{decoded:?}");
    // All but the last were dropped: with the input after them.
    common::wait_until_within(
        "the worker drops the contexts",
        std::time::Duration::from_secs(10),
        || noted(&log.0, "dropped").len() >= 19,
    );
}

#[test]
fn maps_with_different_contexts_run_at_once() {
    let log = LogDir::new("two");
    let pool = Pool::new(2).unwrap();
    let mut small = log.table(0);
    small.rows = vec![1, 2, 3];
    let large = log.table(1000);
    let (a, b) = (pool.with_context(&small), pool.with_context(&large));
    let mut first = a.map(row, (0..3000).map(|i| i % 3)).unwrap();
    let mut second = b.map(row, (0..3000).map(|i| i % 1000)).unwrap();
    for i in 0..3000 {
        assert_eq!(first.next().unwrap().unwrap(), (i % 3) as u32 + 1);
        assert_eq!(second.next().unwrap().unwrap(), (i % 1000) as u32 * 10);
    }
}

#[test]
fn a_replacement_worker_gets_the_context_again() {
    let log = LogDir::new("replace");
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let table = log.table(10);
    let ctx = pool.with_context(&table);
    let results: Vec<Result<u32, Error>> = ctx.map(row_or_abort, 0..8).unwrap().collect();
    assert_eq!(results.len(), 8);
    for (index, result) in results.iter().enumerate() {
        match result {
            Err(Error::WorkerDied { index: 3, .. }) if index == 3 => {}
            Ok(x) => assert_eq!(*x, index as u32 * 10),
            other => panic!("input {index}: {other:?}"),
        }
    }
    let decoded = noted(&log.0, "decoded");
    assert_eq!(
        decoded.len(),
        2,
        "the first worker and its replacement: {decoded:?}"
    );
    assert_ne!(decoded[0], decoded[1]);
}

#[test]
fn a_context_nobody_holds_is_dropped_with_the_next_input() {
    let log = LogDir::new("forget");
    let pool = Pool::new(1).unwrap();
    let table = log.table(10);
    let ctx = pool.with_context(&table);
    assert_eq!(ctx.call(row, 2).unwrap(), 20);
    assert_eq!(
        noted(&log.0, "dropped"),
        [],
        "dropped while its handle lives"
    );
    drop(ctx);
    // The worker learns it with the next frame it gets.
    assert_eq!(pool.call(plain, 1).unwrap(), 1);
    let decoded = noted(&log.0, "decoded");
    common::wait_until_within(
        "the worker drops the context",
        std::time::Duration::from_secs(10),
        || noted(&log.0, "dropped") == decoded,
    );
}

#[test]
fn a_context_over_the_frame_limit_is_an_error() {
    let log = LogDir::new("limit");
    let pool = Pool::builder()
        .processes(1)
        .max_frame_bytes(4096)
        .build()
        .unwrap();
    let table = log.table(10_000);
    let ctx = pool.with_context(&table);
    let error = ctx.call(row, 1).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("could not encode the context: it encodes to "),
        "{error}"
    );
    assert!(
        error.to_string().ends_with("over the frame limit of 4096"),
        "{error}"
    );
    // The pool is fine.
    assert_eq!(pool.call(plain, 5).unwrap(), 5);
}

#[allow(clippy::ptr_arg)] // A task reads its context as `&C`.
fn text_length(text: &String, extra: usize) -> usize {
    text.len() + extra
}
buckshot::register!(text_length);

/// The frame limit is inclusive: a context that encodes to exactly the
/// limit is sent, one byte more is refused.
#[test]
fn a_context_of_exactly_the_frame_limit_is_sent() {
    const LIMIT: usize = 4096;
    let pool = Pool::builder()
        .processes(1)
        .max_frame_bytes(LIMIT as u32)
        .build()
        .unwrap();
    // The context's size beyond its text, read from the refusal of a text
    // over the limit (a CBOR text of 256..65535 bytes has a 3-byte head).
    let probe = "x".repeat(2 * LIMIT);
    let refused = pool.with_context(&probe);
    assert!(format!("{refused:?}").contains("error"), "{refused:?}");
    let message = refused.call(text_length, 0).unwrap_err().to_string();
    let encoded: usize = message
        .split("it encodes to ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|bytes| bytes.parse().ok())
        .unwrap_or_else(|| panic!("no size in {message:?}"));
    let overhead = encoded - probe.len();

    let exact = "y".repeat(LIMIT - overhead);
    let ctx = pool.with_context(&exact);
    assert_eq!(
        format!("{ctx:?}"),
        format!("WithContext {{ bytes: {LIMIT} }}")
    );
    assert_eq!(ctx.call(text_length, 1).unwrap(), exact.len() + 1);

    let over = "z".repeat(LIMIT - overhead + 1);
    let error = pool.with_context(&over).call(text_length, 1).unwrap_err();
    assert!(
        error.to_string().ends_with(&format!(
            "it encodes to {} bytes, over the frame limit of {LIMIT}",
            LIMIT + 1
        )),
        "{error}"
    );
}
