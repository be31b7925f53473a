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

/// One output to record: ranges in its batch's bytes.
pub(crate) struct Record {
    pub prefix: Arc<Prefix>,
    pub input: Range<usize>,
    pub output: Range<usize>,
}

/// Outputs on their way to the writer.
#[derive(Default)]
pub(crate) struct Batch {
    pub records: Vec<Record>,
    pub bytes: Vec<u8>,
}

impl Batch {
    /// What it holds, as counted against [`MAX_BACKLOG`].
    fn size(&self) -> usize {
        self.bytes.len() + self.records.len() * std::mem::size_of::<Record>()
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
        let writer = open(path)?;
        writer.execute_batch("PRAGMA synchronous = NORMAL;")?;
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
/// until the pool closes the channel.
fn write_batches(mut connection: Connection, rx: Receiver<Arc<Batch>>, flow: &Flow) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter());
        if let Err(e) = commit(&mut connection, &batches) {
            tracing::warn!(error = %e, "could not write to the journal");
            let count = batches.iter().map(|batch| batch.records.len()).sum();
            flow.lost(count, "the journal cannot be written");
        }
        let bytes: usize = batches.iter().map(|batch| batch.size()).sum();
        // Committed: they leave the pending ones (unless a map holds one).
        drop(batches);
        flow.backlog.fetch_sub(bytes, Ordering::Relaxed);
    }
}

fn commit(connection: &mut Connection, batches: &[Arc<Batch>]) -> rusqlite::Result<()> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = transaction.prepare_cached(
            "INSERT OR REPLACE INTO outputs (key, task, input, output, at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut note_prefix = transaction
            .prepare_cached("INSERT OR IGNORE INTO prefixes (prefix, task) VALUES (?1, ?2)")?;
        let mut noted: Vec<*const Prefix> = Vec::new();
        for batch in batches {
            for record in &batch.records {
                if !noted.contains(&Arc::as_ptr(&record.prefix)) {
                    noted.push(Arc::as_ptr(&record.prefix));
                    note_prefix
                        .execute(params![record.prefix.id.as_slice(), record.prefix.task])?;
                }
                let input = &batch.bytes[record.input.clone()];
                insert.execute(params![
                    record.prefix.key(input).as_slice(),
                    record.prefix.task,
                    input,
                    &batch.bytes[record.output.clone()],
                    at
                ])?;
            }
        }
    }
    transaction.commit()
}
