//! The journal's flow: a map sees every output an earlier map of its pool
//! yielded, committed or not; an output of any size is recorded; and what
//! goes unrecorded (a writer behind, a full disk) is counted, exactly.
//!
//! The test holds SQLite's write lock on a journal (`BEGIN IMMEDIATE` on a
//! connection of its own) to keep the pool's writer from committing while
//! it looks: the writer waits for it, up to 10 s.

mod common;

use std::path::Path;

use buckshot::Pool;

/// Notes its input in the log (the context).
#[allow(clippy::ptr_arg)] // A task reads its context as `&C`.
fn noted_square(log: &String, x: u64) -> u64 {
    common::note(log, x);
    x * x
}
buckshot::register!(noted_square);

/// Notes its input in the log (the context); returns `bytes` bytes.
#[allow(clippy::ptr_arg)] // A task reads its context as `&C`.
fn noted_blob(log: &String, (x, bytes): (u64, usize)) -> String {
    common::note(log, x);
    char::from(b'a' + (x % 26) as u8).to_string().repeat(bytes)
}
buckshot::register!(noted_blob);

fn rows(db: &Path) -> i64 {
    let connection = rusqlite::Connection::open(db).unwrap();
    connection
        .query_row("SELECT count(*) FROM outputs", [], |row| row.get(0))
        .unwrap()
}

/// SQLite's write lock on a journal, held until dropped.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn hold(db: &Path) -> WriteLock {
        let connection = rusqlite::Connection::open(db).unwrap();
        connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(connection)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

fn log_in(dir: &common::TempDir) -> String {
    dir.0.join("runs.log").to_string_lossy().into_owned()
}

#[test]
fn a_map_sees_what_the_map_before_it_yielded() {
    let dir = common::TempDir::new("journal-read-own");
    let (db, log) = (dir.0.join("journal.db"), log_in(&dir));
    let pool = Pool::builder().processes(2).journal(&db).build().unwrap();
    let squares: Vec<u64> = (0..50u64).map(|x| x * x).collect();
    // Nothing commits meanwhile: every output of the first map is still
    // on its way to the file when the second map starts.
    let lock = WriteLock::hold(&db);
    let map = || -> Vec<u64> {
        pool.with_context(&log)
            .map(noted_square, 0..50u64)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(map(), squares);
    assert_eq!(common::runs(log.as_ref()).len(), 50);
    assert_eq!(map(), squares);
    assert_eq!(
        common::runs(log.as_ref()).len(),
        50,
        "the second map ran inputs whose outputs the first one yielded"
    );
    drop(lock);
    drop(pool);
    assert_eq!(rows(&db), 50);
}

#[test]
fn a_single_output_past_the_backlog_bound_is_recorded() {
    let dir = common::TempDir::new("journal-large");
    let (db, log) = (dir.0.join("journal.db"), log_in(&dir));
    // Over the 64 MiB bound on outputs waiting to be written: with
    // nothing else waiting, it is taken all the same.
    let bytes = (64 << 20) + 4096;
    for round in 0..2 {
        let pool = Pool::builder().processes(1).journal(&db).build().unwrap();
        let output = pool
            .with_context(&log)
            .call(noted_blob, (1, bytes))
            .unwrap();
        assert_eq!(output.len(), bytes);
        assert!(output.bytes().all(|b| b == b'b'));
        assert_eq!(pool.journal_unrecorded(), 0);
        drop(pool);
        assert_eq!(rows(&db), 1, "round {round}");
        assert_eq!(
            common::runs(log.as_ref()),
            [1],
            "round {round}: it ran again"
        );
    }
}

#[test]
fn outputs_left_out_behind_a_busy_writer_are_counted() {
    let dir = common::TempDir::new("journal-behind");
    let (db, log) = (dir.0.join("journal.db"), log_in(&dir));
    let bytes = 40 << 20;
    let pool = Pool::builder().processes(1).journal(&db).build().unwrap();
    let call = |x: u64| call_with(&pool, &log, x, bytes);
    let lock = WriteLock::hold(&db);
    // The first one waits for the writer, which waits for the lock; the
    // second would pass the bound on what waits: it is left out, and
    // counted before the call returns.
    call(1);
    assert_eq!(pool.journal_unrecorded(), 0);
    call(2);
    assert_eq!(pool.journal_unrecorded(), 1);
    // The first is answered while it waits; the second runs again.
    call(1);
    call(2);
    assert_eq!(common::runs(log.as_ref()), [1, 2, 2]);
    assert_eq!(pool.journal_unrecorded(), 2);
    drop(lock);
    drop(pool);
    assert_eq!(rows(&db), 1);
    let pool = Pool::builder().processes(1).journal(&db).build().unwrap();
    call_with(&pool, &log, 1, bytes);
    call_with(&pool, &log, 2, bytes);
    assert_eq!(common::runs(log.as_ref()), [1, 2, 2, 2]);
    assert_eq!(pool.journal_unrecorded(), 0);
}

fn call_with(pool: &Pool, log: &str, x: u64, bytes: usize) {
    let output = pool
        .with_context(&log.to_owned())
        .call(noted_blob, (x, bytes))
        .unwrap();
    assert_eq!(output.len(), bytes);
}

#[test]
fn outputs_a_full_disk_cannot_take_are_counted() {
    let Some(fs) = common::TmpFs::mount("journal-full", 8 << 20) else {
        return;
    };
    let dir = common::TempDir::new("journal-full-log");
    let (db, log) = (fs.0.join("journal.db"), log_in(&dir));
    let pool = Pool::builder().processes(2).journal(&db).build().unwrap();
    fs.fill();
    // Each output takes more pages than the file system has left.
    let bytes = 64 << 10;
    let outputs: Vec<String> = pool
        .with_context(&log)
        .map(noted_blob, (0..20u64).map(|x| (x, bytes)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(outputs.iter().all(|output| output.len() == bytes));
    common::wait_until("every failed commit to be counted", || {
        pool.journal_unrecorded() >= 20
    });
    assert_eq!(pool.journal_unrecorded(), 20);
    drop(pool);
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    // With room again, they run once more, and are recorded.
    let pool = Pool::builder().processes(2).journal(&db).build().unwrap();
    assert_eq!(pool.journal_unrecorded(), 0);
    let again = pool
        .with_context(&log)
        .map(noted_blob, (0..20u64).map(|x| (x, bytes)))
        .unwrap()
        .count();
    assert_eq!(again, 20);
    drop(pool);
    assert_eq!(common::runs(log.as_ref()).len(), 40);
    assert_eq!(rows(&db), 20);
}
