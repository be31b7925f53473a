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
/// Bytes of a target, module or file name that gets a callsite of its own.
const MAX_NAME_BYTES: usize = 256;
/// The target of events folded into one callsite.
const FOLDED_TARGET: &str = "buckshot::worker";

/// Re-emits `record` to the current subscriber, with the fields `input`
/// and `worker` when they are known and the record has no field of that
/// name already (in a nested pool, the innermost pool's values stay).
pub(crate) fn reemit(record: LogRecord, worker: Option<u32>, input: Option<usize>) {
    let Some(level) = level_from_number(record.level) else {
        return;
    };
    // Cheap refusal before any callsite is made or looked up.
    if tracing::level_filters::LevelFilter::current() < level {
        return;
    }
    let (callsite, record) = callsite_for(level, record);
    let metadata = callsite.metadata();
    tracing::dispatcher::get_default(|dispatch| {
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
        let worker = worker.map(u64::from);
        let mut values: Vec<(Field, Option<&dyn Value>)> = Vec::new();
        for field in metadata.fields() {
            let value: Option<&dyn Value> = match record.fields.get(values.len()) {
                Some((_, value)) => Some(match value {
                    LogValue::Str(s) => s,
                    LogValue::I64(n) => n,
                    LogValue::U64(n) => n,
                    LogValue::F64(x) => x,
                    LogValue::Bool(b) => b,
                    LogValue::Text(_) => match &texts[values.len()] {
                        Some(text) => text,
                        None => return,
                    },
                }),
                None if field.name() == "input" => input.as_ref().map(|i| i as &dyn Value),
                None => worker.as_ref().map(|w| w as &dyn Value),
            };
            values.push((field, value));
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
    let Some((padding, _)) = values.last() else {
        return dispatch.event(&Event::new(metadata, &metadata.fields().value_set(&[])));
    };
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

impl Shape {
    fn of(level: Level, record: &LogRecord) -> Shape {
        Shape {
            level,
            target: record.target.clone(),
            module: record.module.clone(),
            file: record.file.clone(),
            line: record.line,
            names: record.fields.iter().map(|(name, _)| name.clone()).collect(),
        }
    }

    /// Whether it deserves a callsite of its own: a few fields, short
    /// names.
    fn is_modest(&self) -> bool {
        let short = |s: &str| s.len() <= MAX_NAME_BYTES;
        self.names.len() + 2 <= MAX_FIELDS
            && short(&self.target)
            && self.module.as_deref().is_none_or(short)
            && self.file.as_deref().is_none_or(short)
            && self
                .names
                .iter()
                .all(|name| name.len() <= MAX_NAME_BYTES / 4)
    }

    /// Whether it is the shape of a folded event.
    fn is_folded(&self) -> bool {
        self.target == FOLDED_TARGET
            && self.module.is_none()
            && self.file.is_none()
            && self.line.is_none()
            && self.names == ["message"]
    }
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

/// The callsite for `record` at `level`, made if new, and the record as it
/// fits that callsite: folded if its shape is outsized, or new once
/// [`MAX_CALLSITES`] are made.
fn callsite_for(level: Level, record: LogRecord) -> (&'static Forwarded, LogRecord) {
    static CALLSITES: OnceLock<Mutex<HashMap<Shape, &'static Forwarded>>> = OnceLock::new();
    let mut record = record;
    let mut shape = Shape::of(level, &record);
    if !shape.is_modest() || (shape.target == FOLDED_TARGET && !shape.is_folded()) {
        record = folded(record);
        shape = Shape::of(level, &record);
    }
    let mut callsites = CALLSITES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(callsite) = callsites.get(&shape) {
        return (callsite, record);
    }
    if callsites.len() >= MAX_CALLSITES && !shape.is_folded() {
        record = folded(record);
        shape = Shape::of(level, &record);
        if let Some(callsite) = callsites.get(&shape) {
            return (callsite, record);
        }
    }
    let callsite = make(&shape);
    callsites.insert(shape, callsite);
    (callsite, record)
}

/// Makes and registers a callsite for `shape`, with the fields `input` and
/// `worker` after its own unless it has them. Its strings live as long as
/// the process: metadata is `'static`, and shapes are bounded in number
/// and size.
fn make(shape: &Shape) -> &'static Forwarded {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let mut names: Vec<&'static str> = shape.names.iter().map(|name| leak(name)).collect();
    for ours in ["input", "worker"] {
        if !shape.names.iter().any(|name| name == ours) {
            names.push(ours);
        }
    }
    let names: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    let callsite: &'static Forwarded = Box::leak(Box::new(Forwarded {
        metadata: OnceLock::new(),
    }));
    let file = shape.file.as_deref().map(leak);
    let name = match (file, shape.line) {
        (Some(file), Some(line)) => leak(&format!("event {file}:{line}")),
        _ => "event (from a worker)",
    };
    let metadata = Metadata::new(
        name,
        leak(&shape.target),
        shape.level,
        file,
        shape.line,
        shape.module.as_deref().map(leak),
        FieldSet::new(names, tracing_core::identify_callsite!(callsite)),
        Kind::EVENT,
    );
    let _ = callsite.metadata.set(metadata);
    tracing::callsite::register(callsite);
    callsite
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &str, names: &[&str]) -> LogRecord {
        LogRecord {
            seq: None,
            level: 3,
            target: target.to_owned(),
            module: None,
            file: Some("src/a.rs".to_owned()),
            line: Some(1),
            fields: names
                .iter()
                .map(|name| (name.to_string(), LogValue::U64(1)))
                .collect(),
        }
    }

    fn names(callsite: &Forwarded) -> Vec<&'static str> {
        callsite
            .metadata()
            .fields()
            .iter()
            .map(|f| f.name())
            .collect()
    }

    #[test]
    fn the_fields_of_a_callsite_fit_its_record_however_many_shapes() {
        // Past the cap, records fold, with their fields in the message.
        for n in 0..MAX_CALLSITES + 10 {
            let (callsite, record) = callsite_for(
                Level::INFO,
                record(&format!("app::t{n}"), &["message", "x", "y"]),
            );
            let names = names(callsite);
            assert!(names.len() >= record.fields.len(), "{names:?}");
            for ((name, _), field) in record.fields.iter().zip(&names) {
                assert_eq!(name, field);
            }
        }
        let (callsite, record) = callsite_for(Level::INFO, record("app::late", &["message", "x"]));
        assert_eq!(names(callsite), ["message", "input", "worker"]);
        assert_eq!(callsite.metadata().target(), FOLDED_TARGET);
        assert_eq!(record.fields.len(), 1);
    }

    #[test]
    fn outsized_and_impostor_shapes_fold() {
        let many: Vec<String> = (0..40).map(|k| format!("f{k}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let long_target = "t".repeat(MAX_NAME_BYTES + 1);
        for record in [
            record("app", &many),
            record(&long_target, &["message"]),
            record(FOLDED_TARGET, &["message", "x"]),
        ] {
            let (callsite, folded) = callsite_for(Level::WARN, record);
            assert_eq!(callsite.metadata().target(), FOLDED_TARGET);
            assert_eq!(folded.fields.len(), 1);
        }
    }

    #[test]
    fn fields_named_like_ours_are_not_doubled() {
        let (callsite, _) = callsite_for(Level::INFO, record("app::own", &["input", "message"]));
        assert_eq!(names(callsite), ["input", "message", "worker"]);
    }
}
