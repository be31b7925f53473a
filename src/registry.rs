//! The table of registered tasks.
//!
//! [`register!`](crate::register) submits one [`Entry`] per function to
//! `inventory`. The pool finds a function's entry by the `TypeId` of its fn
//! item (exact, whatever the path it was named by) and tells the worker the
//! entry's position in the table. Parent and worker are the same binary, so
//! they see the same table in the same order; the handshake compares a digest
//! of it to be sure.

use std::any::{Any, TypeId, type_name};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use crate::protocol::{self, Hello, Outcome};
use crate::task::Task;
use crate::{bulk, panics};

/// One registered function. Built only by [`register!`](crate::register).
#[doc(hidden)]
pub struct Entry {
    /// The fn item's type name, for messages.
    pub(crate) name: fn() -> &'static str,
    /// The fn item's `TypeId`, to find the entry from `Pool::map(f, ..)`.
    pub(crate) type_id: fn() -> TypeId,
    /// Decodes one input, runs the function (with its context, if it reads
    /// one), appends the encoded [`Outcome`].
    pub(crate) run: RunFn,
}

/// The signature of an entry's `run`.
#[doc(hidden)]
pub type RunFn = fn(Option<&mut ContextSlot>, &[u8], &mut Vec<u8>, &mut [u8]);

impl Entry {
    #[doc(hidden)]
    pub const fn new(name: fn() -> &'static str, type_id: fn() -> TypeId, run: RunFn) -> Entry {
        Entry { name, type_id, run }
    }
}

/// A context as a worker holds it: its encoded value until a task first
/// reads it, the value after that. Decoded once, whatever the number of
/// inputs that read it.
#[doc(hidden)]
pub struct ContextSlot {
    /// The CBOR value until decoded: bytes read from a frame, or a
    /// mapping of shared memory.
    encoded: Box<dyn AsRef<[u8]> + Send>,
    value: Option<Box<dyn Any + Send>>,
}

impl ContextSlot {
    pub(crate) fn new(encoded: impl AsRef<[u8]> + Send + 'static) -> ContextSlot {
        ContextSlot {
            encoded: Box::new(encoded),
            value: None,
        }
    }

    /// The value, decoded as a `C` the first time.
    fn get<C: DeserializeOwned + Send + 'static>(
        &mut self,
        scratch: &mut [u8],
    ) -> Result<&C, String> {
        if self.value.is_none() {
            let encoded = (*self.encoded).as_ref();
            let value: C = protocol::decode(encoded, scratch).map_err(|e| e.to_string())?;
            self.value = Some(Box::new(value));
            self.encoded = Box::new(Vec::new());
        }
        self.value
            .as_ref()
            .and_then(|value| value.downcast_ref::<C>())
            .ok_or_else(|| format!("a context of another type than {}", type_name::<C>()))
    }
}

impl std::fmt::Debug for ContextSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextSlot")
            .field("encoded", &(*self.encoded).as_ref().len())
            .field("decoded", &self.value.is_some())
            .finish()
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &(self.name)())
            .finish()
    }
}

inventory::collect!(Entry);

/// The registered tasks, in a fixed order, with a digest of their names.
pub(crate) struct Registry {
    pub(crate) tasks: Vec<&'static Entry>,
    pub(crate) digest: u64,
}

pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let tasks: Vec<&'static Entry> = inventory::iter::<Entry>.into_iter().collect();
        let mut hasher = DefaultHasher::new();
        for task in &tasks {
            (task.name)().hash(&mut hasher);
        }
        Registry {
            digest: hasher.finish(),
            tasks,
        }
    })
}

impl Registry {
    /// Why a worker's handshake does not fit this process, if it does not:
    /// another protocol, or another task table.
    pub(crate) fn mismatch(&self, hello: &Hello) -> Option<String> {
        if hello.version != protocol::VERSION {
            return Some(format!(
                "worker speaks protocol {}, this process {}",
                hello.version,
                protocol::VERSION
            ));
        }
        if hello.tasks == 0 && !self.tasks.is_empty() {
            return Some(format!(
                "worker sees no registered tasks, this process sees {}: its start-up hook ran before the registrations",
                self.tasks.len()
            ));
        }
        if hello.digest != self.digest || hello.tasks as usize != self.tasks.len() {
            return Some(format!(
                "worker sees {} registered tasks, this process {}, or under other names",
                hello.tasks,
                self.tasks.len()
            ));
        }
        None
    }

    /// Position of the entry for the fn item of type `F`.
    pub(crate) fn position<F: 'static>(&self) -> Option<u32> {
        self.position_of(TypeId::of::<F>())
    }

    /// Position of the entry for the fn item whose type is `wanted`.
    pub(crate) fn position_of(&self, wanted: TypeId) -> Option<u32> {
        let position = self
            .tasks
            .iter()
            .position(|task| (task.type_id)() == wanted)?;
        Some(u32::try_from(position).expect("fewer than 4 billion tasks"))
    }
}

/// Runs `entry`, a task of no arguments, once, as a pool's initializer:
/// what went wrong, if it panicked (its message, and where) or could not
/// be called.
pub(crate) fn run_initializer(entry: &Entry) -> Result<(), String> {
    let mut input = Vec::new();
    protocol::encode(&(), &mut input).expect("encoding into a Vec cannot fail");
    let mut out = Vec::new();
    let mut scratch = vec![0; crate::flow::SCRATCH_BYTES];
    (entry.run)(None, &input, &mut out, &mut scratch);
    // An initializer returns `()`: nothing goes beside the outcome.
    match protocol::decode_outcome::<serde::de::IgnoredAny>(&out, &mut scratch) {
        Ok(Outcome::Ok(_)) => Ok(()),
        Ok(Outcome::Panicked(report)) => Err(match report.location {
            Some(location) => format!("panicked at {location}: {}", report.message),
            None => format!("panicked: {}", report.message),
        }),
        Ok(Outcome::Codec(message)) => Err(format!("could not be called: {message}")),
        Err(e) => Err(format!("could not be called: {e}")),
    }
}

/// The body of every registered task's `run`: decode, call, encode, with
/// panics caught and codec failures reported as outcomes. The guard covers
/// the decoding of the context and the input and the encoding of the output
/// too: a `Deserialize` or `Serialize` that panics is the task's own code,
/// reported as its panic, and the worker lives on.
pub(crate) fn run_task<F, M>(
    f: &F,
    context: Option<&mut ContextSlot>,
    input: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut [u8],
) where
    F: Task<M>,
{
    let start = out.len();
    let ran = panics::catch(|| -> Result<(), String> {
        let context: &F::Context = match (&() as &dyn Any).downcast_ref() {
            // A plain task reads no context.
            Some(unit) => unit,
            None => match context.map(|slot| slot.get::<F::Context>(scratch)) {
                Some(Ok(context)) => context,
                Some(Err(e)) => return Err(format!("decode the context: {e}")),
                None => return Err("read a context: none was sent".to_owned()),
            },
        };
        let input: F::Input =
            bulk::decode_input(input, scratch).map_err(|e| format!("decode the input: {e}"))?;
        let output = f.call_with(context, input);
        bulk::encode_ok(&output, out).map_err(|e| format!("encode the output: {e}"))
    });
    let failure = match ran {
        Ok(Ok(())) => return,
        Ok(Err(message)) => Outcome::<()>::Codec(message),
        Err(report) => Outcome::Panicked(Box::new(report)),
    };
    out.truncate(start);
    protocol::encode_failure(&failure, out);
}
