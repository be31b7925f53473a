//! The journal: finished outputs in a SQLite file, so that a map killed
//! halfway resumes where it stopped (feature `journal`,
//! [`PoolBuilder::journal`](crate::PoolBuilder::journal)).
//!
//! An output is keyed by a SHA-256 of its task's name, of its map's
//! context (its encoded value) and of its encoded input. Two halves:
//! - the caller's ([`Lookup`], one per map): before an input is sent, it is
//!   looked up; one that is there, and whose output still decodes, is
//!   answered from the journal and never sent. A map whose task and
//!   context had no outputs in the journal when it started looks nothing
//!   up (a first run pays no lookups);
//! - the pool's ([`Recorder`], on the pool's thread): every `Ok` outcome is
//!   copied, with its input, into a batch that goes to a writer thread at
//!   each delivery. The writer commits what has come in one transaction,
//!   under WAL, so an output is in the file within milliseconds of its
//!   arrival, and a driver killed with SIGKILL loses only what was not
//!   committed yet. Dropping the pool flushes and joins the writer
//!   ([`Journal::close`], at most `CLOSE_BOUND`). The pool's thread never
//!   waits for the writer: past `MAX_BACKLOG` bytes waiting, outcomes go
//!   unrecorded (and run again next time).
//!
//! Errors are not recorded: they run again next time. Several pools and
//! processes may share a file: SQLite locks it, and each connection waits
//! up to `BUSY_TIMEOUT` for another's transaction.
//!
//! Without the feature, [`Lookup`] and [`Recorder`] are never built and the
//! hooks cost a branch on `None`.

#[cfg(feature = "journal")]
pub(crate) use imp::{Journal, Lookup, Recorder};

#[cfg(not(feature = "journal"))]
pub(crate) use off::{Journal, Lookup, Recorder};

#[cfg(not(feature = "journal"))]
mod off {
    //! Stand-ins that cannot be built, so the hooks compile away.

    use std::sync::Arc;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::shared::{Chunk, MapTask, Shared};

    #[derive(Debug)]
    pub(crate) enum Journal {}

    impl Journal {
        pub(crate) fn close(&self) {
            match *self {}
        }
    }

    pub(crate) enum Lookup {}

    impl Lookup {
        pub(crate) fn for_map(_: &Shared, _: &MapTask) -> Option<Box<Lookup>> {
            None
        }

        pub(crate) fn answer<I: Serialize, O: DeserializeOwned>(&mut self, _: &I) -> Option<O> {
            match *self {}
        }
    }

    #[derive(Debug)]
    pub(crate) enum Recorder {}

    impl Recorder {
        pub(crate) fn new(_: Arc<Shared>) -> Option<Recorder> {
            None
        }

        pub(crate) fn record(&mut self, _: &Chunk, _: u32, _: &[u8]) {
            match *self {}
        }

        pub(crate) fn flush(&mut self) {
            match *self {}
        }
    }
}

#[cfg(feature = "journal")]
mod imp {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use sha2::{Digest, Sha256};

    use crate::flow::SCRATCH_BYTES;
    use crate::protocol::{self, Items};
    use crate::registry::registry;
    use crate::shared::{Chunk, MapTask, Shared};

    /// How long a connection waits for another's transaction.
    pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long dropping a pool waits for its journal's last commit.
    pub(crate) const CLOSE_BOUND: Duration = Duration::from_secs(10);
    /// Most bytes of outcomes waiting for the writer. Past it (tiny tasks
    /// finish faster than SQLite stores them), outcomes are not recorded
    /// and run again next time, rather than the backlog growing without
    /// bound or the pool's thread waiting.
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

    /// A pool's journal: a connection for lookups, and the writer thread.
    pub(crate) struct Journal {
        path: PathBuf,
        /// Bytes of the batches sent to the writer and not yet committed.
        backlog: Arc<AtomicUsize>,
        reader: Mutex<Connection>,
        writer: Mutex<Option<Writer>>,
    }

    struct Writer {
        tx: Sender<Batch>,
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

    /// Opens `path` and sets it up. Switching a new file to WAL takes a
    /// lock that SQLite does not wait for: while another process does the
    /// same, it is retried, for at most [`BUSY_TIMEOUT`].
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
        pub(crate) fn open(path: &Path) -> Result<Journal, String> {
            let fail =
                |e: rusqlite::Error| format!("cannot open the journal {}: {e}", path.display());
            let reader = open_with_schema(path).map_err(fail)?;
            let writer = open(path).map_err(fail)?;
            writer
                .execute_batch("PRAGMA synchronous = NORMAL;")
                .map_err(fail)?;
            let (tx, rx) = mpsc::channel();
            let (done_tx, done) = mpsc::channel();
            let backlog = Arc::new(AtomicUsize::new(0));
            let written = Arc::clone(&backlog);
            let thread = std::thread::Builder::new()
                .name("buckshot-journal".into())
                .spawn(move || {
                    write_batches(writer, rx, &written);
                    let _ = done_tx.send(());
                })
                .map_err(|e| format!("cannot start the journal's thread: {e}"))?;
            Ok(Journal {
                path: path.to_owned(),
                backlog,
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
        }

        fn sender(&self) -> Option<Sender<Batch>> {
            let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer.as_ref().map(|writer| writer.tx.clone())
        }

        /// Whether anything was recorded with `prefix`.
        fn holds(&self, prefix: &Prefix) -> bool {
            let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
            let found = reader
                .prepare_cached("SELECT 1 FROM prefixes WHERE prefix = ?1")
                .and_then(|mut statement| statement.exists([prefix.id.as_slice()]));
            // On an error, look up every input: they would say the same.
            found.unwrap_or(true)
        }

        /// The output recorded under `key`, if any.
        fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
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
    fn write_batches(mut connection: Connection, rx: Receiver<Batch>, backlog: &AtomicUsize) {
        while let Ok(first) = rx.recv() {
            let mut batches = vec![first];
            batches.extend(rx.try_iter());
            if let Err(e) = commit(&mut connection, &batches) {
                tracing::warn!(error = %e, "could not write to the journal: these outputs will run again");
            }
            let bytes: usize = batches.iter().map(Batch::size).sum();
            backlog.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn commit(connection: &mut Connection, batches: &[Batch]) -> rusqlite::Result<()> {
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
                    let output = &batch.bytes[record.output.clone()];
                    let key = record.prefix.key(input);
                    insert.execute(params![
                        key.as_slice(),
                        record.prefix.task,
                        input,
                        output,
                        at
                    ])?;
                }
            }
        }
        transaction.commit()
    }

    /// What the key of every input of one task and context starts with.
    struct Prefix {
        task: &'static str,
        hasher: Sha256,
        /// The digest of the task and context alone.
        id: [u8; 32],
    }

    impl Prefix {
        fn new(task: &'static str, context: Option<&[u8]>) -> Prefix {
            let mut hasher = Sha256::new();
            for part in [task.as_bytes(), context.unwrap_or_default()] {
                hasher.update((part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            // A map with no context differs from one with an empty one.
            hasher.update([u8::from(context.is_some())]);
            let id = hasher.clone().finalize().into();
            Prefix { task, hasher, id }
        }

        fn key(&self, input: &[u8]) -> [u8; 32] {
            self.hasher.clone().chain_update(input).finalize().into()
        }
    }

    /// The prefix of `task`'s inputs with context `context` (0 for none),
    /// whose value is looked up in the pool's state; `None` if it is gone
    /// (its map was dropped meanwhile), for a key without it would be
    /// another's.
    fn prefix(shared: &Shared, task: u32, context: u64) -> Option<Prefix> {
        let name = (registry().tasks[task as usize].name)();
        if context == 0 {
            return Some(Prefix::new(name, None));
        }
        let context = shared.lock().contexts.get(&context)?.upgrade()?;
        let (_, value) = protocol::parse_context(&context.frame[protocol::LEN_BYTES..]).ok()?;
        Some(Prefix::new(name, Some(value)))
    }

    /// The caller's half, for one map.
    pub(crate) struct Lookup {
        journal: Arc<Journal>,
        /// The journal held outputs of this task and context when the map
        /// started; if not, no input is looked up.
        holds: bool,
        prefix: Prefix,
        encoded: Vec<u8>,
        scratch: Vec<u8>,
    }

    impl Lookup {
        /// The lookup of a map running `task`, if the pool keeps a journal
        /// (boxed: it is large, and a map's state moves).
        pub(crate) fn for_map(shared: &Shared, task: &MapTask) -> Option<Box<Lookup>> {
            let journal = Arc::clone(shared.config.journal.as_ref()?);
            let value = task.context.as_ref().and_then(|context| {
                protocol::parse_context(&context.frame[protocol::LEN_BYTES..])
                    .ok()
                    .map(|(_, value)| value)
            });
            let name = (registry().tasks[task.position as usize].name)();
            let prefix = Prefix::new(name, value);
            Some(Box::new(Lookup {
                holds: journal.holds(&prefix),
                journal,
                prefix,
                encoded: Vec::new(),
                scratch: vec![0; SCRATCH_BYTES],
            }))
        }

        /// The recorded output for `input`, if there is one that decodes as
        /// an `O`. An input that does not encode is left to the map, which
        /// reports it.
        pub(crate) fn answer<I: Serialize, O: DeserializeOwned>(&mut self, input: &I) -> Option<O> {
            if !self.holds {
                return None;
            }
            self.encoded.clear();
            protocol::encode(input, &mut self.encoded).ok()?;
            let output = self.journal.get(&self.prefix.key(&self.encoded))?;
            // One that no longer decodes (its type changed) runs again.
            protocol::decode(&output, &mut self.scratch).ok()
        }
    }

    /// One recorded outcome: ranges in its batch's bytes.
    struct Record {
        prefix: Arc<Prefix>,
        input: std::ops::Range<usize>,
        output: std::ops::Range<usize>,
    }

    /// Outcomes on their way to the writer.
    #[derive(Default)]
    struct Batch {
        records: Vec<Record>,
        bytes: Vec<u8>,
    }

    impl Batch {
        /// What it holds, as counted against [`MAX_BACKLOG`].
        fn size(&self) -> usize {
            self.bytes.len() + self.records.len() * std::mem::size_of::<Record>()
        }
    }

    /// The pool's half: copies `Ok` outcomes with their inputs, and sends
    /// them to the writer at each delivery.
    pub(crate) struct Recorder {
        shared: Arc<Shared>,
        tx: Option<Sender<Batch>>,
        backlog: Arc<AtomicUsize>,
        /// Outcomes not recorded because the writer fell behind.
        dropped: u64,
        prefixes: HashMap<(u32, u64), Arc<Prefix>>,
        batch: Batch,
    }

    impl std::fmt::Debug for Recorder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Recorder")
                .field("pending", &self.batch.records.len())
                .finish()
        }
    }

    impl Recorder {
        /// The recorder of a pool that keeps a journal. Never call its
        /// methods with the pool's state locked.
        pub(crate) fn new(shared: Arc<Shared>) -> Option<Recorder> {
            let journal = shared.config.journal.as_ref()?;
            let (tx, backlog) = (journal.sender(), Arc::clone(&journal.backlog));
            Some(Recorder {
                shared,
                tx,
                backlog,
                dropped: 0,
                prefixes: HashMap::new(),
                batch: Batch::default(),
            })
        }

        /// Notes the `Ok` ones among `outcomes`, which answer items `done..`
        /// of `chunk`.
        pub(crate) fn record(&mut self, chunk: &Chunk, done: u32, outcomes: &[u8]) {
            let key = (chunk.task, chunk.context);
            if !self.prefixes.contains_key(&key) {
                let Some(prefix) = prefix(&self.shared, chunk.task, chunk.context) else {
                    return;
                };
                self.prefixes.insert(key, Arc::new(prefix));
            }
            let prefix = &self.prefixes[&key];
            let inputs = Items::new(chunk.items()).skip(done as usize);
            for (input, outcome) in inputs.zip(Items::new(outcomes)) {
                let (Ok(input), Ok(outcome)) = (input, outcome) else {
                    return;
                };
                let Some(output) = protocol::ok_value(outcome) else {
                    continue;
                };
                let bytes = &mut self.batch.bytes;
                let at = bytes.len();
                bytes.extend_from_slice(input);
                bytes.extend_from_slice(output);
                self.batch.records.push(Record {
                    prefix: Arc::clone(prefix),
                    input: at..at + input.len(),
                    output: at + input.len()..bytes.len(),
                });
            }
        }

        /// Sends what was noted to the writer.
        pub(crate) fn flush(&mut self) {
            if self.batch.records.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.batch);
            let size = batch.size();
            if self.backlog.load(Ordering::Relaxed) + size > MAX_BACKLOG {
                if self.dropped == 0 {
                    tracing::warn!(
                        "the journal falls behind: outputs go unrecorded (they run again next time)"
                    );
                }
                self.dropped += batch.records.len() as u64;
                return;
            }
            if let Some(tx) = &self.tx {
                self.backlog.fetch_add(size, Ordering::Relaxed);
                if tx.send(batch).is_err() {
                    self.backlog.fetch_sub(size, Ordering::Relaxed);
                }
            }
        }
    }

    impl Drop for Recorder {
        fn drop(&mut self) {
            self.flush();
            if self.dropped > 0 {
                tracing::warn!(
                    outputs = self.dropped,
                    "outputs went unrecorded: the journal fell behind"
                );
            }
        }
    }
}
