//! The two halves that use a journal: a map's lookups ([`Lookup`], on the
//! caller's thread) and the pool's recording of `Ok` outcomes
//! ([`Recorder`], on the pool's thread).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::key::{MapKeys, Prefix};
use super::store::{Batch, Journal, Record};
use crate::chunk::Chunk;
use crate::flow::SCRATCH_BYTES;
use crate::protocol::{self, Items};
use crate::registry::registry;
use crate::shared::{MapTask, Shared};

/// The context value in a CONTEXT frame.
fn context_value(frame: &[u8]) -> Option<&[u8]> {
    protocol::parse_context(&frame[protocol::LEN_BYTES..])
        .ok()
        .map(|(_, value)| value)
}

/// The caller's half, for one map.
pub(crate) struct Lookup {
    journal: Arc<Journal>,
    /// The journal held outputs of this task and context when the map
    /// started; if not, no input is looked up.
    holds: bool,
    keys: MapKeys,
    /// The outputs of this task and context that were on their way to the
    /// file when the map started, by key: the batch and its record. One
    /// leaves once it answered (the batch goes with its last).
    unwritten: HashMap<[u8; 32], (Arc<Batch>, usize)>,
    encoded: Vec<u8>,
    scratch: Vec<u8>,
}

impl Lookup {
    /// The lookup of a map running `task`, if the pool keeps a journal
    /// (boxed: it is large, and a map's state moves).
    pub(crate) fn for_map(shared: &Shared, task: &MapTask) -> Option<Box<Lookup>> {
        let journal = Arc::clone(shared.config.journal.as_ref()?);
        let value = task
            .context
            .as_ref()
            .and_then(|context| context_value(&context.frame));
        let name = (registry().tasks[task.position as usize].name)();
        let keys = MapKeys::new(name, value);
        // Before the file: a batch leaves the pending ones once it is there.
        let mut unwritten = HashMap::new();
        for batch in journal.pending() {
            for (k, record) in batch.records.iter().enumerate() {
                if record.prefix.id == keys.prefix.id {
                    let key = keys.key(batch.input(k));
                    // A later batch holds a later output.
                    unwritten.insert(key, (Arc::clone(&batch), k));
                }
            }
        }
        let holds = !unwritten.is_empty()
            || journal.holds(&keys.prefix)
            || keys
                .legacy
                .as_ref()
                .is_some_and(|legacy| journal.holds(legacy));
        Some(Box::new(Lookup {
            holds,
            journal,
            keys,
            unwritten,
            encoded: Vec::new(),
            scratch: vec![0; SCRATCH_BYTES],
        }))
    }

    /// The recorded output for `input`, if there is one that decodes as
    /// an `O`: under its canonical key, or else under the key an older
    /// journal gave it. An input that does not encode is left to the map,
    /// which reports it.
    pub(crate) fn answer<I: Serialize, O: DeserializeOwned>(&mut self, input: &I) -> Option<O> {
        if !self.holds {
            return None;
        }
        self.encoded.clear();
        protocol::encode(input, &mut self.encoded).ok()?;
        let key = self.keys.key(&self.encoded);
        if let Some((batch, record)) = self.unwritten.remove(&key) {
            if let Ok(output) = protocol::decode(batch.output(record), &mut self.scratch) {
                return Some(output);
            }
        }
        if let Some(output) = self.decoded(&key) {
            return Some(output);
        }
        let legacy = self.keys.legacy_key(&self.encoded)?;
        self.decoded(&legacy)
    }

    /// The output under `key`, if it decodes as an `O` (one that no longer
    /// does, because its type changed, runs again).
    fn decoded<O: DeserializeOwned>(&mut self, key: &[u8; 32]) -> Option<O> {
        let output = self.journal.get(key)?;
        protocol::decode(&output, &mut self.scratch).ok()
    }
}

/// The pool's half: copies `Ok` outcomes with their inputs, and hands
/// them to the journal at each delivery.
pub(crate) struct Recorder {
    shared: Arc<Shared>,
    journal: Arc<Journal>,
    /// By task and context id; a context's go when it does.
    prefixes: HashMap<(u32, u64), Arc<Prefix>>,
    batch: Batch,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("pending", &self.batch.records.len())
            .field("prefixes", &self.prefixes.len())
            .finish()
    }
}

impl Recorder {
    /// The recorder of a pool that keeps a journal. Never call its
    /// methods with the pool's state locked.
    pub(crate) fn new(shared: Arc<Shared>) -> Option<Recorder> {
        let journal = Arc::clone(shared.config.journal.as_ref()?);
        Some(Recorder {
            shared,
            journal,
            prefixes: HashMap::new(),
            batch: Batch::default(),
        })
    }

    /// The canonical prefix of `task`'s inputs with context `context` (0
    /// for none), whose value is looked up in the pool's state; `None` if
    /// it is gone (its map was dropped meanwhile), for a key without it
    /// would be another's.
    fn prefix(&self, task: u32, context: u64) -> Option<Prefix> {
        let name = (registry().tasks[task as usize].name)();
        if context == 0 {
            return Some(Prefix::canonical(name, None));
        }
        let context = self.shared.lock().contexts.get(&context)?.upgrade()?;
        Some(Prefix::canonical(
            name,
            Some(context_value(&context.frame)?),
        ))
    }

    /// Notes the `Ok` ones among `outcomes`, which answer items `done..`
    /// of `chunk`.
    pub(crate) fn record(&mut self, chunk: &Chunk, done: u32, outcomes: &[u8]) {
        let id = (chunk.task, chunk.context);
        if !self.prefixes.contains_key(&id) {
            let Some(prefix) = self.prefix(chunk.task, chunk.context) else {
                return;
            };
            self.prefixes.insert(id, Arc::new(prefix));
        }
        let prefix = &self.prefixes[&id];
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

    /// Hands what was noted to the journal.
    pub(crate) fn flush(&mut self) {
        self.journal.submit(std::mem::take(&mut self.batch));
    }

    /// Forgets what it keeps about context `id`, which is gone.
    pub(crate) fn forget_context(&mut self, id: u64) {
        self.prefixes.retain(|&(_, context), _| context != id);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
