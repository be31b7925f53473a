//! A pool under a low limit on open files: it raises the soft limit for
//! what it needs and leaves the program room, or refuses to build when
//! the hard limit is too low, instead of quietly running fewer workers;
//! a worker that cannot be spawned is logged as a warning.
//!
//! This binary runs each case in a copy of itself (the variable below
//! names the case), since limits are per process.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing_subscriber::layer::{Context, SubscriberExt};

const CASE_ENV: &str = "BUCKSHOT_TEST_FD_LIMIT_CASE";
const WORKERS: usize = 40;
/// A soft limit far below what 40 workers need (6 descriptors each).
const LOW: u64 = 128;

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

fn set_soft_limit(soft: u64) {
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: limit.maximum,
        },
    )
    .unwrap();
}

/// A soft limit too low for the pool, a hard one high enough: raised, and
/// every worker runs.
fn raised() {
    set_soft_limit(LOW);
    let pool = Pool::builder().processes(WORKERS).build().unwrap();
    assert_eq!(pool.processes(), WORKERS);
    common::wait_until_within("every worker is spawned", Duration::from_secs(30), || {
        common::children().len() == WORKERS
    });
    let squares: Vec<u64> = pool
        .map(square, 0..1000u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    // The program still has room of its own.
    let files: Vec<std::fs::File> = (0..200)
        .map(|k| std::fs::File::open("/dev/null").unwrap_or_else(|e| panic!("file {k}: {e}")))
        .collect();
    drop(files);
    assert_eq!(common::children().len(), WORKERS, "no worker was lost");
}

/// A hard limit too low: the build fails and says why, and nothing was
/// started.
fn refused() {
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(LOW),
            maximum: Some(LOW),
        },
    )
    .unwrap();
    let result = Pool::builder().processes(WORKERS).build();
    let Err(error @ Error::Config { .. }) = result else {
        panic!("{result:?}");
    };
    let message = error.to_string();
    // Per worker: its pipes (4), its reply slots' memfd and, natively,
    // its pidfd; 64 for the pool.
    let needed = 40 * if cfg!(buckshot_portable) { 5 } else { 6 } + 64;
    let start = format!(
        "invalid pool configuration: 40 workers need about {needed} open files in this process, \
         which has "
    );
    let (start, end) = (
        start.as_str(),
        " open and may have at most 128 (`ulimit -Hn`): raise that limit or start fewer workers",
    );
    assert!(
        message.starts_with(start) && message.ends_with(end),
        "{message}"
    );
    let open = &message[start.len()..message.len() - end.len()];
    assert!(open.parse::<u64>().is_ok_and(|n| n > 2), "{message}");
    assert!(common::children().is_empty());
    assert_eq!(getrlimit(Resource::Nofile).current, Some(LOW));
}

/// Warnings: their message and fields.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        struct Visit(String);
        impl tracing::field::Visit for Visit {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0 += &format!("{}={value:?} ", field.name());
            }
        }
        let mut visit = Visit(String::new());
        event.record(&mut visit);
        self.0.lock().unwrap().push(visit.0);
    }
}

/// A replacement that cannot be spawned (no descriptor left) is a
/// warning, and is spawned once there is room again.
fn warned() {
    let warnings = Warnings::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(warnings.clone()))
        .unwrap();
    let pool = Pool::builder().processes(1).build().unwrap();
    let worker = pool.call(pid_of, 0).unwrap();
    // No new descriptor from here on: nothing below opens one.
    set_soft_limit(3);
    common::kill9(worker);
    let deadline = Instant::now() + common::BOUND;
    while warnings.0.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no warning within {:?}",
            common::BOUND
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    set_soft_limit(
        getrlimit(Resource::Nofile)
            .maximum
            .unwrap_or(1024)
            .min(1024),
    );
    let warning = warnings.0.lock().unwrap()[0].clone();
    for part in [
        "message=could not spawn a worker ",
        "error=Too many open files",
        "place=\"this machine\" ",
    ] {
        assert!(warning.contains(part), "{warning}");
    }
    // Retried once there is room.
    let replacement = pool.call(pid_of, 0).unwrap();
    assert_ne!(replacement, worker);
}

fn main() {
    let cases: [(&str, fn()); 3] = [
        (
            "a_pool_past_the_soft_limit_raises_it_and_runs_every_worker",
            raised,
        ),
        (
            "a_pool_past_the_hard_limit_is_refused_and_says_why",
            refused,
        ),
        ("a_worker_that_cannot_be_spawned_is_a_warning", warned),
    ];
    if let Ok(case) = std::env::var(CASE_ENV) {
        let (_, run) = cases.iter().find(|(name, _)| *name == case).unwrap();
        run();
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, _) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        let output = common::within(name, move || {
            Command::new(std::env::current_exe().unwrap())
                .env(CASE_ENV, name)
                .output()
                .unwrap()
        });
        if output.status.success() {
            println!("test {name} ... ok ({:?})", started.elapsed());
            passed += 1;
        } else {
            println!("test {name} ... FAILED");
            eprintln!(
                "---- {name}: {} ----\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            failed.push(name);
        }
    }
    println!();
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "test result: {verdict}. {passed} passed; {} failed; 0 ignored; 0 measured",
        failed.len()
    );
    assert!(failed.is_empty(), "failed: {failed:?}");
}
