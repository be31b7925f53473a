//! The pool's half: re-emits a worker's events to the pool's subscriber.
//!
//! `tracing` describes every event by static metadata (level, target,
//! place, field names) behind a callsite, which filters and formatters
//! read. A forwarded event gets a callsite of its own shape, made the first
//! time that shape arrives and kept for the life of the process, so that a
//! filter such as `RUST_LOG=app::parse=debug` treats a worker's events as
//! it treats the same events in the parent. Shapes are bounded: past
//! [`MAX_CALLSITES`], or with too many fields, an event's fields are folded
//! into its message under a fixed callsite.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::callsite::Callsite;
use tracing::field::{Field, FieldSet, Value, display};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};

use super::{LogRecord, LogValue, level_from_number};

/// Callsites made for forwarded events, at most.
const MAX_CALLSITES: usize = 4096;
/// Fields of a forwarded event, `input` and `worker` included, at most.
const MAX_FIELDS: usize = 32;
/// The target of events folded into one callsite.
const FOLDED_TARGET: &str = "buckshot::worker";

/// Re-emits `record`, from worker `worker` while it ran input `input`, to
/// the current subscriber (the pool's thread runs with its creator's).
pub(crate) fn replay(record: LogRecord, worker: u32, input: Option<usize>) {
    let Some(level) = level_from_number(record.level) else {
        return;
    };
    // Cheap refusal before any callsite is made or looked up.
    if tracing::level_filters::LevelFilter::current() < level {
        return;
    }
    let record = if record.fields.len() + 2 > MAX_FIELDS {
        folded(record)
    } else {
        record
    };
    tracing::dispatcher::get_default(|dispatch| {
        let callsite = callsite_for(level, &record);
        let metadata = callsite.metadata();
        if !dispatch.enabled(metadata) {
            return;
        }
        let texts: Vec<Option<_>> = record
            .fields
            .iter()
            .map(|(_, value)| match value {
                LogValue::Text(text) => Some(display(text.as_str())),
                _ => None,
            })
            .collect();
        let input = input.map(|index| index as u64);
        let worker = u64::from(worker);
        let fields = metadata.fields();
        let mut names = fields.iter();
        let mut values: Vec<(Field, Option<&dyn Value>)> = Vec::new();
        for ((_, value), text) in record.fields.iter().zip(&texts) {
            let value: &dyn Value = match value {
                LogValue::Str(s) => s,
                LogValue::I64(n) => n,
                LogValue::U64(n) => n,
                LogValue::F64(x) => x,
                LogValue::Bool(b) => b,
                LogValue::Text(_) => text.as_ref().expect("made for every text"),
            };
            values.push((names.next().expect("a name per field"), Some(value)));
        }
        for value in [input.as_ref().map(|i| i as &dyn Value), Some(&worker)] {
            values.push((names.next().expect("input and worker"), value));
        }
        dispatch_with(dispatch, metadata, &values);
    });
}

/// Emits an event of `metadata` with `values`, which name every field of
/// its callsite, in order.
fn dispatch_with(
    dispatch: &tracing::Dispatch,
    metadata: &'static Metadata<'static>,
    values: &[(Field, Option<&dyn Value>)],
) {
    // `value_set` takes an array: pad it with a field and no value, which
    // a visitor never sees.
    let padding = &values.last().expect("at least input and worker").0;
    let array: [(&Field, Option<&dyn Value>); MAX_FIELDS] =
        std::array::from_fn(|k| match values.get(k) {
            Some((field, value)) => (field, *value),
            None => (padding, None),
        });
    dispatch.event(&Event::new(metadata, &metadata.fields().value_set(&array)));
}

/// The event with its fields in its message, under the folded callsite.
fn folded(record: LogRecord) -> LogRecord {
    let mut message = String::new();
    let mut rest = String::new();
    for (name, value) in &record.fields {
        let text = match value {
            LogValue::Str(s) | LogValue::Text(s) => s.clone(),
            LogValue::I64(n) => n.to_string(),
            LogValue::U64(n) => n.to_string(),
            LogValue::F64(x) => x.to_string(),
            LogValue::Bool(b) => b.to_string(),
        };
        if name == "message" {
            message = text;
        } else {
            rest.push_str(&format!(" {name}={text}"));
        }
    }
    LogRecord {
        seq: record.seq,
        level: record.level,
        target: FOLDED_TARGET.to_owned(),
        module: None,
        file: None,
        line: None,
        fields: vec![(
            "message".to_owned(),
            LogValue::Text(format!("{}: {message}{rest}", record.target)),
        )],
    }
}

/// What makes two events share a callsite.
#[derive(Hash, PartialEq, Eq)]
struct Shape {
    level: Level,
    target: String,
    module: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    names: Vec<String>,
}

/// A callsite made at run time, for one shape of forwarded event.
struct Forwarded {
    metadata: OnceLock<Metadata<'static>>,
}

impl Callsite for Forwarded {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.metadata.get().expect("set when made")
    }
}

/// The callsite of `record`'s shape at `level`, made if new.
fn callsite_for(level: Level, record: &LogRecord) -> &'static Forwarded {
    static CALLSITES: OnceLock<Mutex<HashMap<Shape, &'static Forwarded>>> = OnceLock::new();
    let shape = Shape {
        level,
        target: record.target.clone(),
        module: record.module.clone(),
        file: record.file.clone(),
        line: record.line,
        names: record.fields.iter().map(|(name, _)| name.clone()).collect(),
    };
    let mut callsites = CALLSITES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(callsite) = callsites.get(&shape) {
        return callsite;
    }
    if callsites.len() >= MAX_CALLSITES && record.target != FOLDED_TARGET {
        drop(callsites);
        return callsite_for(level, &folded(record.clone()));
    }
    let callsite = make(&shape);
    callsites.insert(shape, callsite);
    callsite
}

/// Makes and registers a callsite for `shape`. Its strings live as long as
/// the process: metadata is `'static`, and shapes are bounded.
fn make(shape: &Shape) -> &'static Forwarded {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let mut names: Vec<&'static str> = shape.names.iter().map(|name| leak(name)).collect();
    names.extend(["input", "worker"]);
    let names: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    let callsite: &'static Forwarded = Box::leak(Box::new(Forwarded {
        metadata: OnceLock::new(),
    }));
    let place = match (&shape.file, shape.line) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        (Some(file), None) => file.clone(),
        _ => shape.target.clone(),
    };
    let metadata = Metadata::new(
        leak(&format!("event {place} (worker)")),
        leak(&shape.target),
        shape.level,
        shape.file.as_deref().map(leak),
        shape.line,
        shape.module.as_deref().map(leak),
        FieldSet::new(names, tracing_core::identify_callsite!(callsite)),
        Kind::EVENT,
    );
    let _ = callsite.metadata.set(metadata);
    tracing::callsite::register(callsite);
    callsite
}
