//! The pool's own life-cycle events: spawn, death, timeout, exit and
//! respawn of workers are `tracing` events at debug level, with the
//! worker's pid. (A binary of its own: it enables debug, which would change
//! what workers of other tests send.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buckshot::{Error, Pool};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

/// An event's message and the worker it names.
type Seen = (String, Option<u64>);

/// Keeps what every event said.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

#[derive(Default)]
struct Fields {
    message: String,
    worker: Option<u64>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "worker" {
            self.worker = Some(value);
        }
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push((fields.message, fields.worker));
    }
}

fn fate(x: u64) -> u32 {
    match x {
        1 => std::process::abort(),
        2 => common::hang(),
        _ => std::process::id(),
    }
}
buckshot::register!(fate);

#[test]
fn an_idle_pool_takes_in_the_replacement_of_a_killed_worker() {
    // Nothing else wakes an idle pool's thread: the thread that spawned
    // the replacement must, or the pool never hears its handshake (the
    // replacement is a child of ours all the same).
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("buckshot=debug"))
        .with(recorder.clone());
    let pool = tracing::subscriber::with_default(subscriber, || {
        Pool::builder()
            .processes(1)
            .forward_stderr(false)
            .build()
            .unwrap()
    });
    let seen = |message: &str| -> Vec<u64> {
        let seen = recorder.0.lock().unwrap();
        seen.iter()
            .filter(|(m, _)| m == message)
            .filter_map(|(_, worker)| *worker)
            .collect()
    };
    let (first, pool) = common::within("a call", move || (pool.call(fate, 0).unwrap(), pool));
    common::kill9(first);
    common::wait_until_within(
        "the idle pool takes in a replacement",
        common::KILL_BOUND,
        || !seen("worker respawned").is_empty(),
    );
    let replacement = seen("worker respawned")[0];
    assert_ne!(replacement, u64::from(first));
    let served = common::within("a call", move || pool.call(fate, 0).unwrap());
    assert_eq!(u64::from(served), replacement);
}

#[test]
fn workers_lives_are_debug_events() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("buckshot=debug"))
        .with(recorder.clone());
    let (first, results) = tracing::subscriber::with_default(subscriber, || {
        let pool = Pool::builder()
            .processes(1)
            .timeout(Duration::from_millis(500))
            .forward_stderr(false)
            .build()
            .unwrap();
        common::within("the map", move || {
            let first = pool.call(fate, 0).unwrap();
            let results: Vec<_> = pool.map(fate, [1, 2, 0]).unwrap().collect();
            (first, results)
        })
    });
    assert!(matches!(results[0], Err(Error::WorkerDied { .. })));
    assert!(matches!(results[1], Err(Error::TaskTimeout { .. })));
    let last = *results[2].as_ref().unwrap();
    let seen = recorder.0.lock().unwrap().clone();
    let about = |message: &str| -> Vec<u64> {
        seen.iter()
            .filter(|(m, _)| m == message)
            .map(|(_, worker)| worker.expect("events name their worker"))
            .collect()
    };
    let first = u64::from(first);
    assert_eq!(about("worker spawned"), [first], "{seen:#?}");
    assert_eq!(about("worker died"), [first], "{seen:#?}");
    let respawned = about("worker respawned");
    assert_eq!(respawned.len(), 2, "{seen:#?}");
    assert_eq!(
        about("worker timed out: killed"),
        [respawned[0]],
        "{seen:#?}"
    );
    assert_eq!(respawned[1], u64::from(last));
    let exited = about("worker exited");
    assert!(
        exited.contains(&first) && exited.contains(&respawned[0]),
        "{seen:#?}"
    );
}

/// An event's message and the input it names: (map, input).
type Named = (String, Option<(u64, u64)>);

/// Keeps what every event said, and the input it named.
#[derive(Clone, Default)]
struct InputRecorder(Arc<Mutex<Vec<Named>>>);

#[derive(Default)]
struct InputFields {
    message: String,
    map: Option<u64>,
    input: Option<u64>,
}

impl tracing::field::Visit for InputFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        match field.name() {
            "map" => self.map = Some(value),
            "input" => self.input = Some(value),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for InputRecorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = InputFields::default();
        event.record(&mut fields);
        let named = fields.map.zip(fields.input);
        self.0.lock().unwrap().push((fields.message, named));
    }
}

#[test]
fn a_workers_death_names_the_input_it_was_running() {
    let recorder = InputRecorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("buckshot=debug"))
        .with(recorder.clone());
    let results = tracing::subscriber::with_default(subscriber, || {
        let pool = Pool::builder()
            .processes(1)
            .batch_size(1)
            .timeout(Duration::from_millis(500))
            .forward_stderr(false)
            .build()
            .unwrap();
        common::within("the map", move || {
            pool.map(fate, [0, 0, 1, 0, 2]).unwrap().collect::<Vec<_>>()
        })
    });
    assert!(matches!(
        results[2],
        Err(Error::WorkerDied { index: 2, .. })
    ));
    assert!(matches!(
        results[4],
        Err(Error::TaskTimeout { index: 4, .. })
    ));
    let seen = recorder.0.lock().unwrap().clone();
    let named = |message: &str| -> Vec<Option<(u64, u64)>> {
        seen.iter()
            .filter(|(m, _)| m == message)
            .map(|(_, named)| *named)
            .collect()
    };
    let died = named("worker died");
    let map = died[0].expect("the death names its input").0;
    assert_eq!(died, [Some((map, 2))], "{seen:#?}");
    assert_eq!(
        named("worker timed out: killed"),
        [Some((map, 4))],
        "{seen:#?}"
    );
    // The exit of the worker whose death failed an input names it too.
    assert!(
        named("worker exited").contains(&Some((map, 2))),
        "{seen:#?}"
    );
}
