//! Logs from workers: `tracing` events and `log` records that tasks emit
//! reach the subscriber of the pool's creator, with their level, target,
//! fields, and the input and worker they came from; filters apply; with no
//! subscriber, workers do not even format them.
//!
//! Every subscriber in this file enables INFO at most: the level a pool
//! tells its workers is the process-wide maximum, and the test of what
//! workers do not format relies on DEBUG staying off.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use buckshot::Pool;
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

/// One event as the parent's subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    level: Level,
    target: String,
    fields: BTreeMap<String, String>,
}

/// A layer that keeps every event it sees.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields,
        });
    }
}

/// Runs `f` with a subscriber that records what `filter` lets through.
fn recording<T>(filter: &str, f: impl FnOnce() -> T) -> (T, Vec<Seen>) {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(recorder.clone());
    let value = tracing::subscriber::with_default(subscriber, f);
    (value, recorder.seen())
}

fn parse(rows: u64) -> u32 {
    tracing::info!(rows, kind = "csv", "parsed {} rows", rows);
    tracing::debug!("a detail nobody asked for");
    tracing::warn!(target: "worker_logs::quiet", "filtered out by target");
    std::process::id()
}
buckshot::register!(parse);

fn from_a_thread(x: u64) -> u64 {
    std::thread::spawn(move || tracing::info!(x, "from a thread of the task"))
        .join()
        .unwrap();
    x
}
buckshot::register!(from_a_thread);

fn with_log_crate(x: u64) -> u64 {
    tracing_log::log::info!(target: "worker_logs::legacy", "a log record for {x}");
    x
}
buckshot::register!(with_log_crate);

/// A value that must never be formatted.
struct Bomb;

impl fmt::Display for Bomb {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("a filtered-out event was formatted in the worker")
    }
}

fn quiet(x: u64) -> u64 {
    tracing::info!("{}", Bomb);
    tracing::debug!("{}", Bomb);
    x
}
buckshot::register!(quiet);

fn with(seen: &[Seen], key: &str, value: &str) -> Vec<Seen> {
    seen.iter()
        .filter(|event| event.fields.get(key).map(String::as_str) == Some(value))
        .cloned()
        .collect()
}

#[test]
fn events_reach_the_parent_with_their_input_and_worker() {
    let (pids, seen) = recording("info,worker_logs::quiet=off", || {
        let pool = Pool::new(2).unwrap();
        common::within("the map", move || {
            pool.map(parse, [10, 20, 30])
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<u32>>()
        })
    });
    // Two workers: their events arrive in any order.
    let mut parsed: Vec<Seen> = seen
        .iter()
        .filter(|event| event.fields.contains_key("rows"))
        .cloned()
        .collect();
    parsed.sort_by_key(|event| event.fields.get("input").cloned());
    assert_eq!(parsed.len(), 3, "{seen:#?}");
    for (index, (event, pid)) in parsed.iter().zip(&pids).enumerate() {
        let rows = 10 * (index + 1);
        assert_eq!(event.level, Level::INFO);
        assert_eq!(event.target, "worker_logs");
        assert_eq!(event.fields["message"], format!("parsed {rows} rows"));
        assert_eq!(event.fields["rows"], rows.to_string());
        assert_eq!(event.fields["kind"], "csv");
        assert_eq!(event.fields["input"], index.to_string());
        assert_eq!(event.fields["worker"], pid.to_string());
    }
    assert!(
        with(&seen, "message", "a detail nobody asked for").is_empty(),
        "the level filter applies"
    );
    assert!(
        with(&seen, "message", "filtered out by target").is_empty(),
        "a per-target filter applies"
    );
}

#[test]
fn threads_of_a_task_and_log_records_are_forwarded_too() {
    let (_, seen) = recording("info", || {
        let pool = Pool::new(1).unwrap();
        common::within("the maps", move || {
            assert_eq!(pool.call(from_a_thread, 7).unwrap(), 7);
            assert_eq!(pool.call(with_log_crate, 8).unwrap(), 8);
        })
    });
    let threaded = with(&seen, "message", "from a thread of the task");
    assert_eq!(threaded.len(), 1, "{seen:#?}");
    assert_eq!(threaded[0].fields["x"], "7");
    let legacy = with(&seen, "message", "a log record for 8");
    assert_eq!(legacy.len(), 1, "{seen:#?}");
    assert_eq!(legacy[0].target, "worker_logs::legacy");
    assert_eq!(legacy[0].level, Level::INFO);
    assert_eq!(legacy[0].fields["input"], "0");
}

#[test]
fn with_no_subscriber_workers_format_nothing() {
    // Built outside any subscriber: its workers get level "off".
    let pool = Pool::new(1).unwrap();
    let results = common::within("the map", move || {
        pool.map(quiet, 0..20).unwrap().collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 20);
    for result in results {
        result.expect("no event was formatted");
    }
}

#[test]
fn events_below_the_level_are_not_formatted_in_workers() {
    let (results, seen) = recording("warn", || {
        let pool = Pool::new(1).unwrap();
        common::within("the map", move || {
            // The info event would panic if formatted: warn must have
            // reached the worker as its level. (Other tests in this
            // binary enable info, so the process-wide level may be info:
            // this checks that debug, above every filter here, stays off.)
            pool.map(quiet_at_debug, 0..20).unwrap().collect::<Vec<_>>()
        })
    });
    assert_eq!(results.len(), 20);
    for result in results {
        result.expect("no event was formatted");
    }
    assert!(seen.is_empty(), "{seen:#?}");
}

fn quiet_at_debug(x: u64) -> u64 {
    tracing::debug!("{}", Bomb);
    tracing::trace!("{}", Bomb);
    x
}
buckshot::register!(quiet_at_debug);
