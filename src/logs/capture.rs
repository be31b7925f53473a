//! The worker's half: a subscriber that sends events to the pool.
//!
//! Events of any thread of the worker go out as LOG frames on the reply
//! stream, each written whole under the lock that REPLY frames take too, so
//! frames never interleave. A child that a task forks inherits the
//! subscriber but sends nothing: it would share the stream. A value longer
//! than [`MAX_VALUE_BYTES`] is cut, so that a record stays small. Spans are
//! not forwarded (an event inside one arrives without it).

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Event;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;

use super::{EventSink, Events, LogRecord, LogValue, level_number};
use crate::protocol;

/// No item is running.
const IDLE: u64 = u64::MAX;
/// Bytes of a field's text that travel, at most.
pub(crate) const MAX_VALUE_BYTES: usize = 4096;

/// The sequence number of the item the worker is running, [`IDLE`] between
/// items. Events of other threads are tagged with it too.
static RUNNING: AtomicU64 = AtomicU64::new(IDLE);

/// Marks item `seq` as running, or none.
pub(crate) fn set_running(seq: Option<u64>) {
    RUNNING.store(seq.unwrap_or(IDLE), Ordering::Relaxed);
}

/// The item the worker is running, if any.
pub(crate) fn running() -> Option<u64> {
    let seq = RUNNING.load(Ordering::Relaxed);
    (seq != IDLE).then_some(seq)
}

/// Sends this worker's events at `max` and above to the pool, through
/// `replies`; `log` records too. Does nothing for [`LevelFilter::OFF`].
pub(crate) fn install(max: LevelFilter, replies: Arc<Mutex<File>>) {
    if max == LevelFilter::OFF {
        return;
    }
    let subscriber = Events {
        max,
        sink: Capture {
            replies,
            pid: rustix::process::getpid(),
        },
    };
    // A worker runs no `main`, so nothing else set a global subscriber,
    // unless a constructor did: then that one stays.
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = tracing_log::LogTracer::builder()
            .with_max_level(level_to_log(max))
            .init();
    }
}

fn level_to_log(max: LevelFilter) -> tracing_log::log::LevelFilter {
    use tracing_log::log::LevelFilter as Log;
    match max.into_level() {
        None => Log::Off,
        Some(tracing::Level::ERROR) => Log::Error,
        Some(tracing::Level::WARN) => Log::Warn,
        Some(tracing::Level::INFO) => Log::Info,
        Some(tracing::Level::DEBUG) => Log::Debug,
        Some(tracing::Level::TRACE) => Log::Trace,
    }
}

struct Capture {
    replies: Arc<Mutex<File>>,
    /// The worker's pid: a forked child has another.
    pid: rustix::process::Pid,
}

impl EventSink for Capture {
    fn take(&self, event: &Event<'_>) {
        if rustix::process::getpid() != self.pid {
            return;
        }
        let running = RUNNING.load(Ordering::Relaxed);
        let record = to_record(event, (running != IDLE).then_some(running));
        let Ok(frame) = protocol::log_frame(record.seq, |buf| protocol::encode(&record, buf))
        else {
            return;
        };
        let mut replies = self.replies.lock().unwrap_or_else(PoisonError::into_inner);
        // A failed write means the pool is gone; the worker finds out at
        // its next reply.
        let _ = replies.write_all(&frame);
    }
}

/// The record of `event`, which came while item `running` ran, if any.
pub(super) fn to_record(event: &Event<'_>, running: Option<u64>) -> LogRecord {
    // `log` records arrive with their origin in fields of their own.
    let mut fields = Fields::default();
    event.record(&mut fields);
    let metadata = event.metadata();
    let owned = |s: Option<&str>| s.map(str::to_owned);
    LogRecord {
        seq: running,
        level: level_number(*metadata.level()),
        target: fields
            .log_target
            .take()
            .unwrap_or_else(|| metadata.target().to_owned()),
        module: fields
            .log_module
            .take()
            .or_else(|| owned(metadata.module_path())),
        file: fields.log_file.take().or_else(|| owned(metadata.file())),
        line: fields.log_line.take().or(metadata.line()),
        fields: fields.values,
    }
}

#[derive(Default)]
struct Fields {
    values: Vec<(String, LogValue)>,
    log_target: Option<String>,
    log_module: Option<String>,
    log_file: Option<String>,
    log_line: Option<u32>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: LogValue) {
        let value = match value {
            LogValue::Str(s) => LogValue::Str(cut(s)),
            LogValue::Text(s) => LogValue::Text(cut(s)),
            value => value,
        };
        match (field.name(), value) {
            ("log.target", LogValue::Str(s)) => self.log_target = Some(s),
            ("log.module_path", LogValue::Str(s)) => self.log_module = Some(s),
            ("log.file", LogValue::Str(s)) => self.log_file = Some(s),
            ("log.line", LogValue::U64(n)) => self.log_line = u32::try_from(n).ok(),
            (name, value) => self.values.push((name.to_owned(), value)),
        }
    }
}

/// `text`, cut to [`MAX_VALUE_BYTES`] with a note of how much went.
fn cut(mut text: String) -> String {
    if text.len() <= MAX_VALUE_BYTES {
        return text;
    }
    let mut end = MAX_VALUE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("... [{cut} bytes cut]"));
    text
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, LogValue::Str(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, LogValue::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, LogValue::U64(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, LogValue::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, LogValue::Bool(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, LogValue::Text(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, LogValue::Text(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Metadata, Subscriber};

    /// Records the events it sees, as a worker would send them.
    struct Recorder(Mutex<Vec<LogRecord>>);

    impl Subscriber for &'static Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            self.0.lock().unwrap().push(to_record(event, Some(7)));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn an_event_keeps_its_level_target_place_and_typed_fields() {
        let recorder: &'static Recorder = Box::leak(Box::new(Recorder(Mutex::new(Vec::new()))));
        tracing::subscriber::with_default(recorder, || {
            tracing::warn!(target: "app::parse", rows = 3u64, delta = -2i64, ok = true,
                ratio = 0.5, name = "x", shown = ?vec![1, 2], "parsed {} rows", 3);
        });
        let records = recorder.0.lock().unwrap();
        let record = &records[0];
        assert_eq!(record.seq, Some(7));
        assert_eq!(record.level, 2);
        assert_eq!(record.target, "app::parse");
        assert_eq!(record.file.as_deref(), Some(file!()));
        assert!(record.line.is_some());
        let field = |name: &str| {
            record
                .fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            field("message"),
            Some(LogValue::Text("parsed 3 rows".into()))
        );
        assert_eq!(field("rows"), Some(LogValue::U64(3)));
        assert_eq!(field("delta"), Some(LogValue::I64(-2)));
        assert_eq!(field("ok"), Some(LogValue::Bool(true)));
        assert_eq!(field("ratio"), Some(LogValue::F64(0.5)));
        assert_eq!(field("name"), Some(LogValue::Str("x".into())));
        assert_eq!(field("shown"), Some(LogValue::Text("[1, 2]".into())));
    }
}
