//! What answers an input from the journal: its task, its map's context
//! and the input itself, each by value. Another task or another context
//! is never answered with this one's outputs; a `HashMap` (whose encoding
//! changes order from one process to the next) is found again; and rows
//! recorded before keys were canonical still answer.
//!
//! Every task notes its input in a log file, so that a test sees what ran
//! and what the journal answered.

mod common;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use buckshot::Pool;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

fn note(log: &str, x: u64) {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    file.write_all(format!("{x}\n").as_bytes()).unwrap();
}

fn runs(log: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .count()
}

fn rows(db: &Path) -> i64 {
    let connection = rusqlite::Connection::open(db).unwrap();
    connection
        .query_row("SELECT count(*) FROM outputs", [], |row| row.get(0))
        .unwrap()
}

fn double((log, x): (String, u64)) -> u64 {
    note(&log, x);
    2 * x
}
buckshot::register!(double);

fn triple((log, x): (String, u64)) -> u64 {
    note(&log, x);
    3 * x
}
buckshot::register!(triple);

fn scale(factor: &u64, (log, x): (String, u64)) -> u64 {
    note(&log, x);
    factor * x
}
buckshot::register!(scale);

/// The sum of the values, weighted by the context's weight of each key.
fn weigh(weights: &HashMap<String, u64>, (log, values): (String, HashMap<String, u64>)) -> u64 {
    note(&log, values.len() as u64);
    values.iter().map(|(key, value)| weights[key] * value).sum()
}
buckshot::register!(weigh);

/// Fields out of alphabetical order: a struct encodes as a map in the
/// order of its fields.
#[derive(Debug, Serialize, Deserialize)]
struct Point {
    y: u64,
    x: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Offset {
    dy: u64,
    dx: u64,
}

fn shift(offset: &Offset, (log, point): (String, Point)) -> u64 {
    note(&log, point.x);
    point.x + point.y + offset.dx + offset.dy
}
buckshot::register!(shift);

fn sum((log, point): (String, Point)) -> u64 {
    note(&log, point.x);
    point.x + point.y
}
buckshot::register!(sum);

fn setup(name: &str) -> (common::TempDir, std::path::PathBuf, String) {
    let dir = common::TempDir::new(name);
    let db = dir.0.join("journal.db");
    let log = dir.0.join("runs.log").to_string_lossy().into_owned();
    (dir, db, log)
}

fn pool(db: &Path) -> Pool {
    Pool::builder().processes(2).journal(db).build().unwrap()
}

#[test]
fn a_task_is_never_answered_with_another_tasks_outputs() {
    let (_dir, db, log) = setup("journal-tasks");
    let inputs = || (0..20u64).map(|x| (log.clone(), x));
    for round in 0..2 {
        let pool = pool(&db);
        let doubled: Vec<u64> = pool
            .map(double, inputs())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let tripled: Vec<u64> = pool
            .map(triple, inputs())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(doubled, (0..20).map(|x| 2 * x).collect::<Vec<_>>());
        assert_eq!(tripled, (0..20).map(|x| 3 * x).collect::<Vec<_>>());
        // Each task ran its inputs once, the first time.
        assert_eq!(runs(&log), 40, "round {round}");
    }
    assert_eq!(rows(&db), 40);
}

#[test]
fn a_context_is_never_answered_with_another_contexts_outputs() {
    let (_dir, db, log) = setup("journal-contexts");
    let inputs = || (0..20u64).map(|x| (log.clone(), x));
    let pool = pool(&db);
    for (factor, runs_after) in [(2u64, 20), (3, 40), (2, 40), (3, 40)] {
        let scaled: Vec<u64> = pool
            .with_context(&factor)
            .map(scale, inputs())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(scaled, (0..20).map(|x| factor * x).collect::<Vec<_>>());
        assert_eq!(runs(&log), runs_after, "context {factor}");
    }
    drop(pool);
    assert_eq!(rows(&db), 40);
}

/// Sixteen keys: the chance that two maps iterate them in the same order
/// is nil.
fn hash_map(seed: u64) -> HashMap<String, u64> {
    (0..16)
        .map(|k| (format!("key-{k}"), value(seed, k)))
        .collect()
}

/// Values whose CBOR heads take every size: the argument in the head
/// itself, or in 1, 2, 4 or 8 more bytes.
fn value(seed: u64, k: u64) -> u64 {
    let magnitude = [0, 100, 1_000, 100_000, 1 << 33][k as usize % 5];
    magnitude + seed * 2 + k % 2
}

#[test]
fn hash_maps_in_inputs_and_contexts_are_found_again() {
    let (_dir, db, log) = setup("journal-hash-maps");
    let expected: Vec<u64> = (0..10u64)
        .map(|seed| (0..16).map(|k| k * value(seed, k)).sum())
        .collect();
    for round in 0..3 {
        // Built anew each time: each map has an order of its own.
        let weights: HashMap<String, u64> = (0..16).map(|k| (format!("key-{k}"), k)).collect();
        let inputs = (0..10).map(|seed| (log.clone(), hash_map(seed)));
        let pool = pool(&db);
        let weighed: Vec<u64> = pool
            .with_context(&weights)
            .map(weigh, inputs)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(weighed, expected, "round {round}");
        drop(pool);
        assert_eq!(runs(&log), 10, "round {round} ran inputs again");
        assert_eq!(rows(&db), 10, "round {round} added rows");
    }
}

/// The key of an input as the first journals hashed it: the task's name,
/// the context's encoding as it was (length-prefixed), whether there is
/// one, then the input's encoding as it was.
fn old_key(task: &str, context: Option<&[u8]>, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut hasher = Sha256::new();
    for part in [task.as_bytes(), context.unwrap_or_default()] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update([u8::from(context.is_some())]);
    let prefix = hasher.clone().finalize().to_vec();
    (prefix, hasher.chain_update(input).finalize().to_vec())
}

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

#[test]
fn rows_recorded_before_keys_were_canonical_still_answer() {
    let (_dir, db, log) = setup("journal-old-keys");
    drop(pool(&db));
    let offset = Offset { dy: 1, dx: 2 };
    let connection = rusqlite::Connection::open(&db).unwrap();
    // Rows of both tasks as an older version wrote them, with outputs no
    // run would give: an answer from the journal shows.
    for (task, context) in [
        (std::any::type_name_of_val(&shift), Some(cbor(&offset))),
        (std::any::type_name_of_val(&sum), None),
    ] {
        for x in 0..5u64 {
            let input = cbor(&(log.clone(), Point { y: x, x }));
            let (prefix, key) = old_key(task, context.as_deref(), &input);
            connection
                .execute(
                    "INSERT INTO outputs (key, task, input, output, at) VALUES (?1, ?2, ?3, ?4, 0)",
                    rusqlite::params![key, task, input, cbor(&(1000 + x))],
                )
                .unwrap();
            connection
                .execute(
                    "INSERT OR IGNORE INTO prefixes (prefix, task) VALUES (?1, ?2)",
                    rusqlite::params![prefix, task],
                )
                .unwrap();
        }
    }
    drop(connection);
    let points = || (0..5u64).map(|x| (log.clone(), Point { y: x, x }));
    let pool = pool(&db);
    let shifted: Vec<u64> = pool
        .with_context(&offset)
        .map(shift, points())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let summed: Vec<u64> = pool
        .map(sum, points())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let recorded: Vec<u64> = (1000..1005).collect();
    assert_eq!((shifted, summed), (recorded.clone(), recorded));
    assert_eq!(runs(&log), 0, "inputs ran");
}
