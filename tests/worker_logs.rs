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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The name of the event's callsite.
    name: String,
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
            name: event.metadata().name().to_owned(),
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
    assert_eq!(threaded[0].fields["input"], "0");
    let legacy = with(&seen, "message", "a log record for 8");
    assert_eq!(legacy.len(), 1, "{seen:#?}");
    assert_eq!(legacy[0].target, "worker_logs::legacy");
    assert_eq!(legacy[0].level, Level::INFO);
    assert_eq!(legacy[0].fields["input"], "0");
}

#[test]
fn with_no_subscriber_workers_format_nothing() {
    // Another thread keeps an info subscriber alive meanwhile: the pool is
    // built outside any subscriber, so its workers get level "off" anyway.
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let (ready, is_ready) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let subscriber = tracing_subscriber::registry().with(EnvFilter::new("info"));
        tracing::subscriber::with_default(subscriber, || {
            ready.send(()).unwrap();
            let _ = held.recv();
        });
    });
    is_ready.recv().unwrap();
    let pool = Pool::new(1).unwrap();
    let results = common::within("the map", move || {
        pool.map(quiet, 0..20).unwrap().collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 20);
    for result in results {
        result.expect("no event was formatted");
    }
    drop(hold);
    other.join().unwrap();
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
    assert_eq!(seen.len(), 20, "only the warnings: {seen:#?}");
    assert!(seen.iter().all(|event| event.level == Level::WARN));
}

fn quiet_at_debug(x: u64) -> u64 {
    tracing::warn!("kept");
    tracing::debug!("{}", Bomb);
    tracing::trace!("{}", Bomb);
    x
}
buckshot::register!(quiet_at_debug);

fn huge_field(bytes: usize) -> usize {
    tracing::info!(blob = %"x".repeat(bytes), "a huge field");
    bytes
}
buckshot::register!(huge_field);

#[test]
fn a_huge_field_is_cut_and_costs_the_input_nothing() {
    let (results, seen) = recording("info", || {
        let pool = Pool::builder()
            .processes(1)
            .max_frame_bytes(1 << 20)
            .build()
            .unwrap();
        common::within("the map", move || {
            pool.map(huge_field, [2 << 20, 10])
                .unwrap()
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(results[0].as_ref().unwrap(), &(2 << 20), "{results:?}");
    assert_eq!(results[1].as_ref().unwrap(), &10);
    let huge = with(&seen, "input", "0");
    assert_eq!(huge.len(), 1, "{seen:#?}");
    let blob = &huge[0].fields["blob"];
    assert!(blob.len() < 8192, "{} bytes", blob.len());
    assert!(
        blob.ends_with(&format!("... [{} bytes cut]", (2 << 20) - 4096)),
        "{}",
        &blob[4000..]
    );
}

fn from_many_threads(threads: u64) -> u64 {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                for k in 0..200u64 {
                    // Over PIPE_BUF: a frame written in pieces would
                    // interleave with others.
                    tracing::info!(t, k, pad = %"p".repeat(3000), more = %"q".repeat(3000), "burst");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    threads
}
buckshot::register!(from_many_threads);

/// How many events the pool said it dropped, in its warnings.
fn dropped(seen: &[Seen]) -> usize {
    seen.iter()
        .filter_map(|event| event.fields.get("message"))
        .filter_map(|message| message.strip_prefix("[buckshot: "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum()
}

#[test]
fn events_from_many_threads_never_break_the_stream() {
    let (results, seen) = recording("info", || {
        let pool = Pool::new(1).unwrap();
        common::within("the map", move || {
            pool.map(from_many_threads, [8, 8])
                .unwrap()
                .collect::<Vec<_>>()
        })
    });
    for result in &results {
        assert_eq!(result.as_ref().unwrap(), &8, "{results:?}");
    }
    let bursts = with(&seen, "message", "burst");
    for event in &bursts {
        assert_eq!(event.fields["pad"], "p".repeat(3000));
        assert_eq!(event.fields["more"], "q".repeat(3000));
    }
    assert_eq!(
        bursts.len() + dropped(&seen),
        2 * 8 * 200,
        "every event arrived or was counted"
    );
}

fn forks_and_logs(x: u64) -> u64 {
    // SAFETY: the child only logs (through the worker's subscriber, which
    // must stay silent in it) and exits without unwinding.
    let child = unsafe { libc::fork() };
    for k in 0..100u64 {
        tracing::info!(k, pad = %"f".repeat(3000), "around a fork");
    }
    if child == 0 {
        // SAFETY: _exit ends the child without running the parent's exit
        // handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    x
}
buckshot::register!(forks_and_logs);

#[test]
fn a_forked_child_sends_nothing() {
    let (results, seen) = recording("info", || {
        let pool = Pool::new(1).unwrap();
        common::within("the map", move || {
            pool.map(forks_and_logs, [1, 2, 3])
                .unwrap()
                .collect::<Vec<_>>()
        })
    });
    for (x, result) in (1..).zip(&results) {
        assert_eq!(result.as_ref().unwrap(), &x, "{results:?}");
    }
    let around = with(&seen, "message", "around a fork");
    assert_eq!(
        around.len() + dropped(&seen),
        300,
        "the parent's events only"
    );
}

/// A layer whose writer stalls on events of one target until released.
struct Stalling(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl<S: Subscriber> Layer<S> for Stalling {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "worker_logs::stall" {
            let (released, changed) = &*self.0;
            let mut released = released.lock().unwrap();
            while !*released {
                released = changed.wait(released).unwrap();
            }
        }
    }
}

fn stall_logs(n: u64) -> u64 {
    for k in 0..n {
        tracing::info!(target: "worker_logs::stall", k, "into a stalled subscriber");
    }
    n
}
buckshot::register!(stall_logs);

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

#[test]
fn a_stalled_subscriber_holds_up_no_map() {
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(Stalling(Arc::clone(&gate)));
    // If the pool's thread waited for the subscriber, a worker's events
    // would fill its pipe and it would time out. 10,000 events take a
    // debug build well under a second, also on a loaded machine.
    let pool = tracing::subscriber::with_default(subscriber, || {
        Pool::builder()
            .processes(2)
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap()
    });
    let pool = common::within_for(
        "maps while the subscriber stalls",
        std::time::Duration::from_secs(30),
        move || {
            assert_eq!(pool.call(stall_logs, 10_000).unwrap(), 10_000);
            assert_eq!(pool.call(square, 7).unwrap(), 49);
            assert!(matches!(pool.call(stall_logs, 1).map(|_| ()), Ok(())));
            pool
        },
    );
    // Dropping the pool waits for the stalled subscriber a moment, not
    // for ever.
    common::within_for(
        "dropping the pool",
        std::time::Duration::from_secs(10),
        move || drop(pool),
    );
    let (released, changed) = &*gate;
    *released.lock().unwrap() = true;
    changed.notify_all();
}

fn flood_until(stop: String) -> u64 {
    let mut k = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::path::Path::new(&stop).exists() && std::time::Instant::now() < deadline {
        tracing::info!(target: "worker_logs::flood", k, "flooding");
        k += 1;
    }
    k
}
buckshot::register!(flood_until);

fn announce_then_flood(paths: (String, String)) -> u64 {
    common::announce(&paths.0);
    flood_until(paths.1)
}
buckshot::register!(announce_then_flood);

#[test]
fn a_worker_flooding_logs_does_not_hold_back_other_results() {
    let stop = std::env::temp_dir().join(format!("buckshot-flood-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let stop_path = stop.to_string_lossy().into_owned();
    let rendezvous = common::Rendezvous::new();
    let (flooded, _) = recording("info,worker_logs::flood=off", || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let flooding = {
            let pool = Arc::clone(&pool);
            let paths = (rendezvous.path(), stop_path.clone());
            std::thread::spawn(move || pool.call(announce_then_flood, paths))
        };
        rendezvous.wait();
        // The other worker answers, flood or not: the flood lasts until
        // the calls are done, so calls it held back would hit the bound
        // (generous: a loaded machine is slow, not stuck).
        let answers = {
            let pool = Arc::clone(&pool);
            common::within_for(
                "calls during a log flood",
                std::time::Duration::from_secs(30),
                move || (0..20).map(|x| pool.call(square, x).unwrap()).sum::<u64>(),
            )
        };
        assert_eq!(answers, (0..20).map(|x| x * x).sum::<u64>());
        std::fs::write(&stop, b"").unwrap();
        let flooded = flooding.join().unwrap();
        let _ = std::fs::remove_file(&stop);
        flooded
    });
    assert!(flooded.unwrap() > 0);
}

fn tag_with_input(x: u64) -> u64 {
    tracing::info!(x, "tagged");
    x
}
buckshot::register!(tag_with_input);

#[test]
fn each_event_of_a_batch_carries_its_own_input() {
    let (results, seen) = recording("info", || {
        // Five inputs a frame: events must name the input that ran, not
        // the first of its frame.
        let pool = Pool::builder().processes(2).batch_size(5).build().unwrap();
        common::within("the map", move || {
            pool.map(tag_with_input, 100..140)
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<u64>>()
        })
    });
    assert_eq!(results, (100..140).collect::<Vec<u64>>());
    let tagged = with(&seen, "message", "tagged");
    assert_eq!(tagged.len(), 40, "{seen:#?}");
    for event in tagged {
        let x: u64 = event.fields["x"].parse().unwrap();
        assert_eq!(event.fields["input"], (x - 100).to_string(), "{event:?}");
    }
}

/// A layer that panics on the first event of one target, once.
struct PanicsOnce(Arc<AtomicBool>);

impl<S: Subscriber> Layer<S> for PanicsOnce {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "worker_logs::boom" && !self.0.swap(true, Ordering::SeqCst)
        {
            panic!("the subscriber breaks on an event");
        }
    }
}

fn boom_then_log(n: u64) -> u64 {
    tracing::info!(target: "worker_logs::boom", "boom");
    for k in 0..n {
        tracing::info!(k, "after the boom");
    }
    n
}
buckshot::register!(boom_then_log);

#[test]
fn a_subscriber_that_panics_loses_that_event_alone_and_says_so() {
    let recorder = Recorder::default();
    let broke = Arc::new(AtomicBool::new(false));
    // The recorder sees what got past the panicking layer.
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(PanicsOnce(Arc::clone(&broke)))
        .with(recorder.clone());
    tracing::subscriber::with_default(subscriber, || {
        let pool = Pool::new(1).unwrap();
        common::within("calls past a panicking subscriber", move || {
            assert_eq!(pool.call(boom_then_log, 20).unwrap(), 20);
            assert_eq!(pool.call(boom_then_log, 20).unwrap(), 20);
            // Its forwarder reports when it closes.
            drop(pool);
        });
    });
    assert!(broke.load(Ordering::SeqCst), "the layer never panicked");
    let seen = recorder.seen();
    let count = |kind: &str| -> usize {
        seen.iter()
            .filter_map(|event| event.fields.get("message"))
            .filter(|message| message.contains(kind))
            .filter_map(|message| message.strip_prefix("[buckshot: "))
            .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
            .sum()
    };
    let after = with(&seen, "message", "after the boom").len();
    assert_eq!(after + count("dropped"), 40, "{seen:#?}");
    assert_eq!(with(&seen, "message", "boom").len(), 1, "the second boom");
    assert_eq!(count("the subscriber panicked on them"), 1, "{seen:#?}");
}

/// Set in a copy of this test binary that runs a pool under a subscriber
/// that panics, so that the test reads what it says on stderr.
const PANICKING_CHILD_ENV: &str = "BUCKSHOT_TEST_PANICKING_SUBSCRIBER";

/// A layer that panics on every event of the given targets.
struct PanicsOn(&'static [&'static str]);

impl<S: Subscriber> Layer<S> for PanicsOn {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if self.0.contains(&event.metadata().target()) {
            panic!("the subscriber breaks on {}", event.metadata().target());
        }
    }
}

#[test]
fn a_panicking_subscriber_is_said_once_and_counted_on_stderr() {
    if std::env::var_os(PANICKING_CHILD_ENV).is_some() {
        // The copy: it panics on each boom, and on the pool's report too.
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(PanicsOn(&["worker_logs::boom", "buckshot::logs"]));
        tracing::subscriber::with_default(subscriber, || {
            let pool = Pool::new(1).unwrap();
            assert_eq!(pool.call(boom_then_log, 3).unwrap(), 3);
            assert_eq!(pool.call(boom_then_log, 3).unwrap(), 3);
        });
        return;
    }
    let name = "a_panicking_subscriber_is_said_once_and_counted_on_stderr";
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(PANICKING_CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = common::within("the copy", move || child.wait_with_output().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let said = "buckshot: the tracing subscriber panicked on a log event";
    assert_eq!(stderr.matches(said).count(), 1, "{stderr}");
    assert!(
        stderr.contains("buckshot: [buckshot: 2 log events lost: the subscriber panicked on them]"),
        "{stderr}"
    );
}

/// Writes a LOG frame whose record is not CBOR into the worker's reply
/// stream, then answers.
fn send_a_bad_log_record(x: u64) -> u64 {
    let mut frame = Vec::new();
    let body: Vec<u8> = [&[7u8][..], &u64::MAX.to_le_bytes(), b"\xff\xfenot cbor"].concat();
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    let fd = common::reply_fd();
    // SAFETY: writing a byte buffer to a raw fd.
    let written = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    assert_eq!(written as usize, frame.len());
    x
}
buckshot::register!(send_a_bad_log_record);

#[test]
fn log_records_are_decoded_off_the_pools_thread() {
    // The pool's thread reads a LOG frame's item and hands the record on
    // as it came: a flood of events costs its loop a copy each, not a
    // decoding. A record that is not one is found out by the thread that
    // re-emits it, which says so; the worker and its input are not at
    // fault.
    let (result, seen) = recording("info", || {
        let pool = Pool::new(1).unwrap();
        common::within("a call", move || pool.call(send_a_bad_log_record, 5))
    });
    assert_eq!(result.unwrap(), 5);
    assert!(
        seen.iter().any(|event| event.level == Level::WARN
            && event
                .fields
                .get("message")
                .is_some_and(|m| m.contains("a worker sent a log event that is not one"))),
        "{:?}",
        seen.iter().map(|e| &e.fields).collect::<Vec<_>>()
    );
}

/// An event of a modest shape, and one whose field name is too long for a
/// callsite of its own.
fn modest_and_outsized(x: u64) -> u64 {
    tracing::info!(x, "modest");
    tracing::info!(
        a_field_name_far_longer_than_any_field_name_that_gets_a_callsite_of_its_own = x,
        "outsized"
    );
    x
}
buckshot::register!(modest_and_outsized);

#[test]
fn an_outsized_event_is_folded_once_into_its_message() {
    let (_, seen) = recording("info", || {
        let pool = Pool::new(1).unwrap();
        common::within("the call", move || pool.call(modest_and_outsized, 7))
    });
    let modest = with(&seen, "message", "modest");
    assert_eq!(modest.len(), 1, "{seen:#?}");
    assert_eq!(modest[0].target, "worker_logs");
    // The callsite is named after the event's place, as tracing names one.
    assert!(
        modest[0].name.starts_with("event tests/worker_logs.rs:"),
        "{modest:?}"
    );
    let folded = with(
        &seen,
        "message",
        "worker_logs: outsized \
         a_field_name_far_longer_than_any_field_name_that_gets_a_callsite_of_its_own=7",
    );
    assert_eq!(folded.len(), 1, "{seen:#?}");
    assert_eq!(folded[0].target, "buckshot::worker");
    assert_eq!(folded[0].name, "event (from a worker)");
    assert_eq!(folded[0].fields["input"], "0");
}
