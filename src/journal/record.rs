//! The two halves that use a journal: a map's lookups ([`Lookup`], on the
//! caller's thread) and the pool's recording of `Ok` outcomes
//! ([`Recorder`], on the pool's thread).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use super::key::{MapKeys, Prefix};
use super::store::{Batch, Journal, Record};
use crate::chunk::{Chunk, context_value};
use crate::hooks::{Answerer, Answerers, Observer, Wants};
use crate::protocol::{self, Items};
use crate::registry::registry;

/// The caller's half, for one map.
struct Lookup {
    journal: Arc<Journal>,
    keys: MapKeys,
    /// The outputs of this task and context that were on their way to the
    /// file when the map started, by key: the batch and its record. One
    /// leaves once it answered (the batch goes with its last).
    unwritten: HashMap<[u8; 32], (Arc<Batch>, usize)>,
}

impl Lookup {
    /// The lookup of a map of task `task` (its position) reading a context
    /// of encoded value `context`; `None` if the journal held no output of
    /// theirs when it started (a first run pays no lookups).
    fn for_map(journal: &Arc<Journal>, task: u32, context: Option<&[u8]>) -> Option<Lookup> {
        let name = (registry().tasks[task as usize].name)();
        let keys = MapKeys::new(name, context);
        // Before the file: a batch leaves the pending ones once it is there.
        let mut unwritten = HashMap::new();
        for batch in journal.pending() {
            for k in 0..batch.records.len() {
                if batch.prefix(k).id == keys.prefix.id {
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
        holds.then(|| Lookup {
            journal: Arc::clone(journal),
            keys,
            unwritten,
        })
    }
}

impl Answerer for Lookup {
    /// Offers the output recorded for the encoded `input`: the one on its
    /// way to the file, then the one in it under its canonical key, then
    /// under the key an older journal gave it.
    fn answer(&mut self, input: &[u8], accept: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let key = self.keys.key(input);
        if let Some((batch, record)) = self.unwritten.remove(&key) {
            if accept(batch.output(record)) {
                return true;
            }
        }
        if self.journal.get(&key).is_some_and(|output| accept(&output)) {
            return true;
        }
        self.keys
            .legacy_key(input)
            .and_then(|legacy| self.journal.get(&legacy))
            .is_some_and(|output| accept(&output))
    }
}

/// Makes the lookups of a pool's maps.
pub(crate) struct Lookups(pub(crate) Arc<Journal>);

impl Answerers for Lookups {
    fn for_map(&self, task: u32, context: Option<&[u8]>) -> Option<Box<dyn Answerer>> {
        let lookup = Lookup::for_map(&self.0, task, context)?;
        Some(Box::new(lookup))
    }
}

/// The pool's half: copies `Ok` outcomes with their inputs, and hands
/// them to the journal at each delivery.
pub(crate) struct Recorder {
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
    pub(crate) fn new(journal: Arc<Journal>) -> Recorder {
        Recorder {
            journal,
            prefixes: HashMap::new(),
            batch: Batch::default(),
        }
    }
}

impl Observer for Recorder {
    fn wants(&self) -> Wants {
        // Keys are made of inputs as plain CBOR.
        Wants {
            plain_items: true,
            ..Wants::default()
        }
    }

    /// Notes the `Ok` ones among `outcomes`, which answer items `done..`
    /// of `chunk`.
    fn answered(&mut self, chunk: &Chunk, done: u32, outcomes: &[u8]) {
        let id = (chunk.task, chunk.context);
        let prefix = match self.prefixes.entry(id) {
            Entry::Occupied(known) => known.into_mut(),
            // Once per task and context: a context's frame never changes.
            Entry::Vacant(new) => {
                let value = chunk
                    .context_frame
                    .as_deref()
                    .and_then(|f| context_value(f));
                if chunk.context != 0 && value.is_none() {
                    // A key without its context would be another map's.
                    return;
                }
                let name = (registry().tasks[chunk.task as usize].name)();
                new.insert(Arc::new(Prefix::canonical(name, value)))
            }
        };
        // Its position in the batch, once an output needs it: a prefix
        // there has outputs.
        let mut position = None;
        let inputs = Items::new(chunk.items()).skip(done as usize);
        for (input, outcome) in inputs.zip(Items::new(outcomes)) {
            let (Ok(input), Ok(outcome)) = (input, outcome) else {
                return;
            };
            let Some(output) = protocol::ok_value(outcome) else {
                continue;
            };
            let prefix = *position.get_or_insert_with(|| self.batch.prefix_of(prefix));
            let bytes = &mut self.batch.bytes;
            let at = bytes.len();
            bytes.extend_from_slice(input);
            bytes.extend_from_slice(output);
            self.batch.records.push(Record {
                prefix,
                input: at..at + input.len(),
                output: at + input.len()..bytes.len(),
            });
        }
    }

    /// Hands what was noted to the journal.
    fn flush(&mut self) {
        self.journal.submit(std::mem::take(&mut self.batch));
    }

    fn forget_context(&mut self, id: u64) {
        self.prefixes.retain(|&(_, context), _| context != id);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
