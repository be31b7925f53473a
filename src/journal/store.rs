//! The journal's file: a connection for lookups, a writer thread that
//! commits batches of outputs, and the batches on their way to it
//! ([`Journal::pending`]). A map's lookups take those too, so that a map
//! sees every output an earlier map of its pool yielded, committed or not.
//!
//! A batch joins the pending ones before it is sent, and leaves them only
//! after its transaction committed (or failed): a map that takes the
//! pending batches first and looks in the file second never misses an
//! output in between. The pending ones are weak references, which die
//! when the writer drops its batch after the commit: the writer never
//! takes their lock (a lock it held when preempted would stall the pool's
//! thread on a loaded machine), the pool's thread only pushes and prunes,
//! keys are made by the writer (and by a map for what it takes), and a
//! committed batch's memory goes at once.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::key::Prefix;
use crate::error::BoxError;

/// How long a connection waits for another's transaction.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dropping a pool waits for its journal's last commit.
pub(crate) const CLOSE_BOUND: Duration = Duration::from_secs(10);
/// Most bytes of outcomes waiting for the writer. Past it (tiny tasks
/// finish faster than SQLite stores them), outcomes are not recorded and
/// run again next time, rather than the backlog growing without bound or
/// the pool's thread waiting. A batch is always taken while nothing
/// waits, so that an output of any size is recorded.
pub(crate) const MAX_BACKLOG: usize = 64 << 20;
/// The shortest time between the starts of two commits: outputs that
/// come faster wait for the next one, at most this long.
pub(crate) const COMMIT_EVERY: Duration = Duration::from_millis(20);
/// Each connection's page cache, at most, in KiB: keys are random, so
/// each commit touches pages all over the key index, and a resumed run
/// looks them up all over it; with SQLite's 2 MiB, those pages are read
/// back from the file again and again.
const CACHE_KIB: u32 = 32 << 10;

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS outputs (
        key    BLOB PRIMARY KEY,  -- SHA-256 of task, context and input
        task   TEXT NOT NULL,     -- the task's name
        input  BLOB NOT NULL,     -- the encoded input (CBOR)
        output BLOB NOT NULL,     -- the encoded output (CBOR)
        at     INTEGER NOT NULL   -- when, in seconds since the Unix epoch
    );
    -- The (task, context) pairs with outputs, so that a map of one
    -- with none skips the lookups.
    CREATE TABLE IF NOT EXISTS prefixes (
        prefix BLOB PRIMARY KEY,  -- SHA-256 of task and context
        task   TEXT NOT NULL
    );";

/// One output to record: its prefix's position in its batch's, and
/// ranges in its batch's bytes.
pub(crate) struct Record {
    pub prefix: u32,
    pub input: Range<usize>,
    pub output: Range<usize>,
}

/// Outputs on their way to the writer.
#[derive(Default)]
pub(crate) struct Batch {
    /// The prefixes of its records' keys, each once.
    pub prefixes: Vec<Arc<Prefix>>,
    pub records: Vec<Record>,
    pub bytes: Vec<u8>,
}

impl Batch {
    /// What it holds, as counted against [`MAX_BACKLOG`].
    fn size(&self) -> usize {
        self.bytes.len() + self.records.len() * std::mem::size_of::<Record>()
    }

    /// The position of `prefix` among its prefixes, added if new.
    pub(crate) fn prefix_of(&mut self, prefix: &Arc<Prefix>) -> u32 {
        // Few prefixes, and the last one is nearly always it.
        let known = self.prefixes.iter().rposition(|p| Arc::ptr_eq(p, prefix));
        known.unwrap_or_else(|| {
            self.prefixes.push(Arc::clone(prefix));
            self.prefixes.len() - 1
        }) as u32
    }

    pub(crate) fn prefix(&self, record: usize) -> &Prefix {
        &self.prefixes[self.records[record].prefix as usize]
    }

    pub(crate) fn input(&self, record: usize) -> &[u8] {
        &self.bytes[self.records[record].input.clone()]
    }

    pub(crate) fn output(&self, record: usize) -> &[u8] {
        &self.bytes[self.records[record].output.clone()]
    }
}

/// What the pool, its maps and the writer share.
#[derive(Default)]
struct Flow {
    /// Bytes of the batches sent to the writer and not yet committed.
    backlog: AtomicUsize,
    /// The batches sent to the writer, oldest first; those that are
    /// committed are dead.
    pending: Mutex<VecDeque<Weak<Batch>>>,
    /// Outputs not recorded: left out while the writer was behind, or
    /// lost with a commit that failed.
    unrecorded: AtomicU64,
    /// Transactions the writer committed.
    commits: AtomicU64,
}

impl Flow {
    fn pending(&self) -> MutexGuard<'_, VecDeque<Weak<Batch>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `n` outputs not recorded; warns the first time.
    fn lost(&self, n: usize, why: &str) {
        if self.unrecorded.fetch_add(n as u64, Ordering::Relaxed) == 0 && n > 0 {
            tracing::warn!("{why}: outputs go unrecorded (they run again next time)");
        }
    }
}

/// A pool's journal: a connection for lookups, and the writer thread.
pub(crate) struct Journal {
    path: PathBuf,
    flow: Arc<Flow>,
    reader: Mutex<Connection>,
    writer: Mutex<Option<Writer>>,
}

struct Writer {
    tx: Sender<Arc<Batch>>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

/// Opens `path` and sets it up. Switching a new file to WAL takes a lock
/// that SQLite does not wait for: while another process does the same, it
/// is retried, for at most [`BUSY_TIMEOUT`].
fn open_with_schema(path: &Path) -> rusqlite::Result<Connection> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let result = open(path).and_then(|connection| {
            connection.execute_batch(SCHEMA)?;
            Ok(connection)
        });
        match result {
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path` and starts its writer.
    pub(crate) fn open(path: &Path) -> Result<Journal, BoxError> {
        let reader = open_with_schema(path)?;
        reader.execute_batch(&format!("PRAGMA cache_size = -{CACHE_KIB};"))?;
        let writer = open(path)?;
        writer.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{CACHE_KIB};"
        ))?;
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let flow = Arc::new(Flow::default());
        let written = Arc::clone(&flow);
        let thread = std::thread::Builder::new()
            .name("buckshot-journal".into())
            .spawn(move || {
                write_batches(writer, rx, &written);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the journal's thread: {e}"))?;
        Ok(Journal {
            path: path.to_owned(),
            flow,
            reader: Mutex::new(reader),
            writer: Mutex::new(Some(Writer { tx, done, thread })),
        })
    }

    /// Commits what is left and stops the writer, waiting at most
    /// [`CLOSE_BOUND`]. Called once the pool's thread is gone.
    pub(crate) fn close(&self) {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(Writer { tx, done, thread }) = writer else {
            return;
        };
        drop(tx);
        match done.recv_timeout(CLOSE_BOUND) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
            }
            Err(RecvTimeoutError::Timeout) => tracing::warn!(
                path = %self.path.display(),
                "the journal's last commit did not finish in {CLOSE_BOUND:?}; left to finish"
            ),
        }
        let unrecorded = self.unrecorded();
        if unrecorded > 0 {
            tracing::warn!(
                path = %self.path.display(),
                outputs = unrecorded,
                "outputs went unrecorded in the journal (they run again next time)"
            );
        }
    }

    /// Outputs not recorded so far.
    pub(crate) fn unrecorded(&self) -> u64 {
        self.flow.unrecorded.load(Ordering::Relaxed)
    }

    /// Hands `batch` to the writer, unless the writer is behind (more than
    /// [`MAX_BACKLOG`] bytes would wait, and some wait already): then its
    /// outputs are counted as unrecorded.
    pub(crate) fn submit(&self, batch: Batch) {
        if batch.records.is_empty() {
            return;
        }
        let (size, count) = (batch.size(), batch.records.len());
        let waiting = self.flow.backlog.load(Ordering::Relaxed);
        if waiting > 0 && waiting + size > MAX_BACKLOG {
            self.flow.lost(count, "the journal falls behind");
            return;
        }
        let batch = Arc::new(batch);
        {
            let mut pending = self.flow.pending();
            while pending
                .front()
                .is_some_and(|first| first.strong_count() == 0)
            {
                pending.pop_front();
            }
            pending.push_back(Arc::downgrade(&batch));
        }
        self.flow.backlog.fetch_add(size, Ordering::Relaxed);
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        // The batch dies with the writer's copy if it cannot be sent.
        let sent = writer
            .as_ref()
            .is_some_and(|writer| writer.tx.send(batch).is_ok());
        drop(writer);
        if !sent {
            self.flow.backlog.fetch_sub(size, Ordering::Relaxed);
            self.flow.lost(count, "the journal's writer is gone");
        }
    }

    /// The batches sent to the writer and not committed yet. Take them
    /// before looking in the file: a batch leaves them once it is there.
    pub(crate) fn pending(&self) -> Vec<Arc<Batch>> {
        self.flow
            .pending()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Whether anything was committed with `prefix`.
    pub(crate) fn holds(&self, prefix: &Prefix) -> bool {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let found = reader
            .prepare_cached("SELECT 1 FROM prefixes WHERE prefix = ?1")
            .and_then(|mut statement| statement.exists([prefix.id.as_slice()]));
        // On an error, look up every input: they would say the same.
        found.unwrap_or(true)
    }

    /// The output committed under `key`, if any.
    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let found = reader
            .prepare_cached("SELECT output FROM outputs WHERE key = ?1")
            .and_then(|mut statement| {
                statement
                    .query_row([key.as_slice()], |row| row.get(0))
                    .optional()
            });
        match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "journal lookup failed: the input runs");
                None
            }
        }
    }
}

/// Writes batches as they come, each run of them in one transaction,
/// until the pool closes the channel. A transaction starts at most every
/// [`COMMIT_EVERY`]: one that follows another waits for what comes in
/// until then, so that a fast stream of outputs makes few large commits
/// (each commit writes every page it touched, and random keys touch pages
/// all over the file). An output after a quiet spell goes at once.
fn write_batches(mut connection: Connection, rx: Receiver<Arc<Batch>>, flow: &Flow) {
    let mut last: Option<Instant> = None;
    let mut rows = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        if let Some(due) = last.map(|last| last + COMMIT_EVERY) {
            loop {
                batches.extend(rx.try_iter());
                let Some(left) = due.checked_duration_since(Instant::now()) else {
                    break;
                };
                match rx.recv_timeout(left) {
                    Ok(batch) => batches.push(batch),
                    // Closed: what came goes now.
                    Err(_) => break,
                }
            }
        }
        batches.extend(rx.try_iter());
        last = Some(Instant::now());
        match commit(&mut connection, &batches, &mut rows) {
            Ok(()) => {
                flow.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not write to the journal");
                let count = batches.iter().map(|batch| batch.records.len()).sum();
                flow.lost(count, "the journal cannot be written");
            }
        }
        rows.clear();
        let bytes: usize = batches.iter().map(|batch| batch.size()).sum();
        // Committed: they leave the pending ones (unless a map holds one).
        drop(batches);
        flow.backlog.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Rows inserted by one statement: fewer statements, less of SQLite's
/// per-statement work (measured: a third of an insert's instructions).
const ROWS_PER_INSERT: usize = 32;

/// One row to insert: its key, and where its record is.
type Row = ([u8; 32], u32, u32);

fn insert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
    format!("INSERT OR REPLACE INTO outputs (key, task, input, output, at) VALUES {values}")
}

/// Commits the outputs of `batches` in one transaction, in the order of
/// their keys (so that each page of the key index is visited once); an
/// output and a later one of the same key: the later stays. `rows` is
/// scratch space.
fn commit(
    connection: &mut Connection,
    batches: &[Arc<Batch>],
    rows: &mut Vec<Row>,
) -> rusqlite::Result<()> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    for (b, batch) in batches.iter().enumerate() {
        for k in 0..batch.records.len() {
            rows.push((batch.prefix(k).key(batch.input(k)), b as u32, k as u32));
        }
    }
    // By their first 8 bytes, enough for the order of the pages; stable:
    // the later of two outputs of one key is inserted last.
    rows.sort_by_key(|&(key, _, _)| {
        u64::from_be_bytes([
            key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
        ])
    });
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut note_prefix = transaction
            .prepare_cached("INSERT OR IGNORE INTO prefixes (prefix, task) VALUES (?1, ?2)")?;
        let mut noted: Vec<*const Prefix> = Vec::new();
        for prefix in batches.iter().flat_map(|batch| &batch.prefixes) {
            if !noted.contains(&Arc::as_ptr(prefix)) {
                noted.push(Arc::as_ptr(prefix));
                note_prefix.execute(params![prefix.id.as_slice(), prefix.task])?;
            }
        }
        let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
        let mut insert = transaction.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
        for chunk in &mut chunks {
            bind_rows(&mut insert, chunk, batches, at)?;
            insert.raw_execute()?;
        }
        let mut insert_one = transaction.prepare_cached(&insert_sql(1))?;
        for row in chunks.remainder() {
            bind_rows(&mut insert_one, std::slice::from_ref(row), batches, at)?;
            insert_one.raw_execute()?;
        }
    }
    transaction.commit()
}

/// Binds the values of `rows` to `insert`'s parameters, in order.
fn bind_rows(
    insert: &mut rusqlite::Statement<'_>,
    rows: &[Row],
    batches: &[Arc<Batch>],
    at: i64,
) -> rusqlite::Result<()> {
    for (n, (key, b, k)) in rows.iter().enumerate() {
        let (batch, k) = (&batches[*b as usize], *k as usize);
        let first = n * 5 + 1;
        insert.raw_bind_parameter(first, key.as_slice())?;
        insert.raw_bind_parameter(first + 1, batch.prefix(k).task)?;
        insert.raw_bind_parameter(first + 2, batch.input(k))?;
        insert.raw_bind_parameter(first + 3, batch.output(k))?;
        insert.raw_bind_parameter(first + 4, at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh journal in a directory of its own, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("buckshot-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn db(&self) -> PathBuf {
            self.0.join("journal.db")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A batch of `prefix`'s outputs: `(input, output)` pairs.
    fn batch(prefix: &Arc<Prefix>, outputs: &[(&[u8], &[u8])]) -> Batch {
        let mut batch = Batch::default();
        for (input, output) in outputs {
            let prefix = batch.prefix_of(prefix);
            let at = batch.bytes.len();
            batch.bytes.extend_from_slice(input);
            batch.bytes.extend_from_slice(output);
            batch.records.push(Record {
                prefix,
                input: at..at + input.len(),
                output: at + input.len()..batch.bytes.len(),
            });
        }
        batch
    }

    fn rows(db: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let connection = Connection::open(db).unwrap();
        let mut statement = connection
            .prepare("SELECT input, output FROM outputs ORDER BY input")
            .unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn every_output_of_a_commit_lands_under_its_key() {
        // More than one statement's worth, and a remainder.
        let scratch = Scratch::new("rows");
        let journal = Journal::open(&scratch.db()).unwrap();
        let prefix = Arc::new(Prefix::new("t", None));
        let n = ROWS_PER_INSERT * 2 + 5;
        let pairs: Vec<([u8; 2], [u8; 3])> =
            (0..n as u8).map(|x| ([0x18, x], [0x19, 0x01, x])).collect();
        let outputs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(input, output)| (input.as_slice(), output.as_slice()))
            .collect();
        journal.submit(batch(&prefix, &outputs));
        journal.close();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(input, output)| (input.to_vec(), output.to_vec()))
            .collect();
        assert_eq!(rows(&scratch.db()), expected);
        for (input, output) in &pairs {
            assert_eq!(
                journal.get(&prefix.key(input)).as_deref(),
                Some(&output[..])
            );
        }
        assert!(journal.holds(&prefix));
        assert!(!journal.holds(&Prefix::new("u", None)));
        assert_eq!(journal.unrecorded(), 0);
    }

    #[test]
    fn the_later_of_two_outputs_of_one_key_stays() {
        let scratch = Scratch::new("later");
        let journal = Journal::open(&scratch.db()).unwrap();
        let prefix = Arc::new(Prefix::new("t", None));
        // Sent while the writer still waits for its first commit's lock,
        // so that both go in one transaction: a writer holds it.
        let lock = Connection::open(scratch.db()).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        journal.submit(batch(&prefix, &[(&[0x01], &[0x0a]), (&[0x02], &[0x0b])]));
        journal.submit(batch(&prefix, &[(&[0x02], &[0x0c]), (&[0x01], &[0x0d])]));
        journal.submit(batch(&prefix, &[(&[0x01], &[0x0e])]));
        lock.execute_batch("COMMIT").unwrap();
        journal.close();
        assert_eq!(
            rows(&scratch.db()),
            [(vec![0x01], vec![0x0e]), (vec![0x02], vec![0x0c])]
        );
    }

    #[test]
    fn a_stream_of_outputs_makes_few_commits() {
        // One batch every millisecond for 200 ms: one commit per
        // COMMIT_EVERY at most, where each batch alone would be one.
        let scratch = Scratch::new("stream");
        let journal = Journal::open(&scratch.db()).unwrap();
        let prefix = Arc::new(Prefix::new("t", None));
        let start = Instant::now();
        let mut sent = 0u32;
        while start.elapsed() < Duration::from_millis(200) {
            let input = [
                0x1a,
                (sent >> 24) as u8,
                (sent >> 16) as u8,
                (sent >> 8) as u8,
                sent as u8,
            ];
            journal.submit(batch(&prefix, &[(&input, &[0x00])]));
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        let elapsed = start.elapsed();
        journal.close();
        let commits = journal.flow.commits.load(Ordering::Relaxed);
        let bound = (elapsed.as_millis() / COMMIT_EVERY.as_millis()) as u64 + 2;
        assert_eq!(rows(&scratch.db()).len(), sent as usize);
        assert!(
            commits <= bound,
            "{commits} commits of {sent} batches in {elapsed:?}"
        );
        // The first goes at once, the others not all at the end.
        assert!(
            commits >= 3,
            "{commits} commits: the stream waited for its end"
        );
    }
}
