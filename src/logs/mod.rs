//! Logs from workers: `tracing` events (and `log` records) that tasks emit
//! in a worker reach the parent's subscriber.
//!
//! A pool notes its creator's subscriber and the most verbose level that
//! subscriber may want, and tells its workers that level. With no
//! subscriber the level is "off": a worker installs nothing, and its
//! events are not even formatted.
//!
//! - [`capture`], in the worker: a subscriber that encodes each enabled
//!   event as a [`LogRecord`] and writes it as a LOG frame on the reply
//!   stream, tagged with the item that was running;
//! - [`forward`], in the pool's thread: hands records, and the pool's own
//!   events, to a thread that re-emits them to the noted subscriber,
//!   through a bounded queue;
//! - [`reemit`], in that thread: re-emits a record at its level, with its
//!   target, place and fields, plus the fields `input` (the input's index)
//!   and `worker` (the worker's pid).

pub(crate) mod capture;
pub(crate) mod forward;
pub(crate) mod reemit;

use serde::{Deserialize, Serialize};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// One event, as it travels from a worker to its pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    /// The sequence number of the item that was running, if any. It
    /// travels in the LOG frame's header, not in the record: the pool's
    /// thread reads it without decoding the record.
    #[serde(skip)]
    pub seq: Option<u64>,
    /// 1 (error) to 5 (trace).
    pub level: u8,
    pub target: String,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The event's fields, `message` included, in order.
    pub fields: Vec<(String, LogValue)>,
}

/// A field's value, typed as the event recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum LogValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    /// A value recorded with `Debug` or `Display`, already formatted.
    Text(String),
}

/// Where a subscriber of [`Events`] hands each event.
pub(crate) trait EventSink: Send + Sync + 'static {
    fn take(&self, event: &Event<'_>);
}

/// A subscriber that passes every event at `max` and above to its sink,
/// and ignores spans: what a worker sends the pool, and what a pool's
/// thread queues for its creator's subscriber.
pub(crate) struct Events<S> {
    pub max: LevelFilter,
    pub sink: S,
}

impl<S: EventSink> Subscriber for Events<S> {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && self.max >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        self.sink.take(event);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// A level filter as a number: 0 is off, 1 error ... 5 trace.
pub(crate) fn filter_number(filter: LevelFilter) -> u8 {
    match filter.into_level() {
        None => 0,
        Some(level) => level_number(level),
    }
}

pub(crate) fn filter_from_number(n: u8) -> LevelFilter {
    level_from_number(n).map_or(LevelFilter::OFF, LevelFilter::from_level)
}

pub(crate) fn level_number(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

pub(crate) fn level_from_number(n: u8) -> Option<Level> {
    Some(match n {
        1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        5 => Level::TRACE,
        _ => return None,
    })
}

/// The level to tell workers of a pool whose creator's subscriber is
/// `dispatch`: none without one, else the most verbose level any
/// subscriber of the process may want.
pub(crate) fn worker_level(dispatch: &tracing::Dispatch) -> u8 {
    if dispatch.is::<tracing_core::subscriber::NoSubscriber>() {
        return 0;
    }
    filter_number(LevelFilter::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_as_numbers() {
        for filter in [
            LevelFilter::OFF,
            LevelFilter::ERROR,
            LevelFilter::WARN,
            LevelFilter::INFO,
            LevelFilter::DEBUG,
            LevelFilter::TRACE,
        ] {
            assert_eq!(filter_from_number(filter_number(filter)), filter);
        }
        assert_eq!(level_from_number(0), None);
        assert_eq!(level_from_number(6), None);
    }

    #[test]
    fn no_subscriber_means_off() {
        assert_eq!(worker_level(&tracing::Dispatch::none()), 0);
    }
}
