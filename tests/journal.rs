//! The journal: a map killed halfway resumes where it stopped (every
//! recorded input is answered, every other one runs once), every finished
//! output is committed without waiting for the pool to go, and a third run
//! runs nothing; killing never corrupts the file; two processes may share
//! one; errors and outputs that no longer decode run again.
//!
//! This binary runs as the test, and (with the variable below set) as the
//! driver program that maps and is killed. Every task appends its input to
//! a log file, so the test counts how often each input ran.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use buckshot::Pool;

/// Set in the driver: `DIR,COUNT,MILLIS`.
const DRIVER_ENV: &str = "BUCKSHOT_TEST_JOURNAL_DRIVER";
/// Set in a driver (and so in its workers) whose inputs from this one on
/// hang.
const HANG_ENV: &str = "BUCKSHOT_TEST_JOURNAL_HANG_FROM";

/// Notes its input in the log (the context), then works `millis`, or
/// hangs (see [`HANG_ENV`]).
#[allow(clippy::ptr_arg)] // A task reads its context as `&C`.
fn slow_square(log: &String, (x, millis): (u64, u64)) -> u64 {
    common::note(log, x);
    let hang_from = std::env::var(HANG_ENV)
        .ok()
        .map(|from| from.parse().unwrap());
    if hang_from.is_some_and(|from| x >= from) {
        common::hang();
    }
    std::thread::sleep(Duration::from_millis(millis));
    x * x
}
buckshot::register!(slow_square);

/// Notes its input in the log (the context); panics on 3.
#[allow(clippy::ptr_arg)] // A task reads its context as `&C`.
fn square_but_three(log: &String, x: u64) -> u64 {
    common::note(log, x);
    assert_ne!(x, 3, "three is refused");
    x * x
}
buckshot::register!(square_but_three);

fn cube(x: u64) -> u64 {
    x * x * x
}
buckshot::register!(cube);

/// The driver: maps `count` inputs of `millis` each with the journal in
/// `dir`, and prints every output, in order.
fn driver(spec: &str) {
    let mut parts = spec.split(',');
    let dir = PathBuf::from(parts.next().unwrap());
    let count: u64 = parts.next().unwrap().parse().unwrap();
    let millis: u64 = parts.next().unwrap().parse().unwrap();
    let pool = Pool::builder()
        .processes(2)
        .journal(dir.join("journal.db"))
        .build()
        .unwrap();
    let log = dir.join("runs.log").to_string_lossy().into_owned();
    let inputs = (0..count).map(|x| (x, millis));
    let mut stdout = std::io::stdout().lock();
    for output in pool.with_context(&log).map(slow_square, inputs).unwrap() {
        writeln!(stdout, "{}", output.unwrap()).unwrap();
    }
}

/// A driver, killed if the test fails before it ends.
struct Driver(Child);

impl Driver {
    fn start(dir: &Path, count: u64, millis: u64) -> Driver {
        Driver::start_hanging(dir, count, millis, None)
    }

    /// A driver whose inputs from `hang_from` on hang.
    fn start_hanging(dir: &Path, count: u64, millis: u64, hang_from: Option<u64>) -> Driver {
        let mut command = Command::new(std::env::current_exe().unwrap());
        if let Some(from) = hang_from {
            command.env(HANG_ENV, from.to_string());
        }
        let child = command
            .env(DRIVER_ENV, format!("{},{count},{millis}", dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Driver(child)
    }

    /// Waits for it to finish and returns the outputs it printed.
    fn outputs(mut self) -> Vec<u64> {
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        let output = common::within("a driver", move || child.wait_with_output().unwrap());
        assert!(output.status.success(), "driver: {:?}", output.status);
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| line.parse().unwrap())
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn integrity(db: &Path) -> (String, i64) {
    let connection = rusqlite::Connection::open(db).unwrap();
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    let rows: i64 = connection
        .query_row("SELECT count(*) FROM outputs", [], |row| row.get(0))
        .unwrap();
    (check, rows)
}

/// The inputs whose outputs `db` holds, decoded from its rows.
fn recorded_inputs(db: &Path) -> Vec<u64> {
    let connection = rusqlite::Connection::open(db).unwrap();
    let mut statement = connection.prepare("SELECT input FROM outputs").unwrap();
    let mut inputs: Vec<u64> = statement
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|input| {
            let (x, _millis): (u64, u64) =
                ciborium::de::from_reader(input.unwrap().as_slice()).unwrap();
            x
        })
        .collect();
    inputs.sort();
    inputs
}

/// Kills `driver` with SIGKILL, and waits for its workers to follow it
/// (parent-death signal): their last notes land before they go.
fn kill(mut driver: Driver) {
    let workers: Vec<u32> = common::children_of(driver.0.id())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(workers.len(), 2, "the driver's workers");
    common::kill9(driver.0.id());
    let _ = driver.0.wait();
    for worker in workers {
        assert!(
            common::exits_within(worker, common::BOUND),
            "worker {worker} stays"
        );
    }
}

fn a_map_killed_halfway_resumes_where_it_stopped() {
    let dir = common::TempDir::new("journal-resume");
    let (log, db) = (dir.0.join("runs.log"), dir.0.join("journal.db"));
    let squares: Vec<u64> = (0..300u64).map(|x| x * x).collect();
    // First run: killed with SIGKILL once about half the inputs ran,
    // whatever it was doing (a commit, say).
    let first = Driver::start(&dir.0, 300, 20);
    common::wait_until("half the inputs to run", || common::runs(&log).len() >= 150);
    kill(first);
    let ran_first = common::runs(&log).len();
    let (check, recorded) = integrity(&db);
    assert_eq!(check, "ok");
    let kept = recorded_inputs(&db);
    assert_eq!(kept.len() as i64, recorded);
    // Second run: to the end, every output in order. Exactly the inputs
    // that were not recorded run, once each: what was lost is what ran
    // but was not committed yet.
    assert_eq!(Driver::start(&dir.0, 300, 20).outputs(), squares);
    let all = common::runs(&log);
    let mut second = all[ran_first..].to_vec();
    second.sort();
    let missing: Vec<u64> = (0..300)
        .filter(|x| kept.binary_search(x).is_err())
        .collect();
    assert_eq!(
        second, missing,
        "the second run ran other inputs than those not recorded"
    );
    // Third run: nothing runs.
    assert_eq!(Driver::start(&dir.0, 300, 20).outputs(), squares);
    assert_eq!(
        common::runs(&log).len(),
        all.len(),
        "the third run ran inputs"
    );
    assert_eq!(integrity(&db), ("ok".to_owned(), 300));
    println!(
        "resume: {ran_first} ran before the kill, {recorded} recorded, {} ran twice",
        ran_first - recorded as usize
    );
}

/// Every finished output is committed while its map goes on, within a
/// bound far under the pool's life: a driver whose inputs from 150 on
/// hang, killed once both its workers hang, lost nothing but those two.
fn finished_outputs_are_committed_while_the_map_runs() {
    let dir = common::TempDir::new("journal-committed");
    let (log, db) = (dir.0.join("runs.log"), dir.0.join("journal.db"));
    let first = Driver::start_hanging(&dir.0, 300, 2, Some(150));
    // A worker runs its inputs in order: once both hang (each noted the
    // one it hangs in), every input before 150 has finished.
    common::wait_until("both workers to hang", || common::runs(&log).len() == 152);
    common::wait_until_within(
        "the first 150 outputs to be committed",
        common::KILL_BOUND,
        || integrity(&db).1 == 150,
    );
    kill(first);
    assert_eq!(integrity(&db), ("ok".to_owned(), 150));
    assert_eq!(recorded_inputs(&db), (0..150).collect::<Vec<u64>>());
    let squares: Vec<u64> = (0..300u64).map(|x| x * x).collect();
    assert_eq!(Driver::start(&dir.0, 300, 2).outputs(), squares);
    let mut second = common::runs(&log)[152..].to_vec();
    second.sort();
    assert_eq!(second, (150..300).collect::<Vec<u64>>());
}

fn processes_share_a_journal() {
    let dir = common::TempDir::new("journal-shared");
    let squares: Vec<u64> = (0..200u64).map(|x| x * x).collect();
    // Started at once, they also race to create the file.
    let drivers: Vec<Driver> = (0..4).map(|_| Driver::start(&dir.0, 200, 2)).collect();
    for driver in drivers {
        assert_eq!(driver.outputs(), squares);
    }
    assert_eq!(integrity(&dir.0.join("journal.db")), ("ok".to_owned(), 200));
}

/// Many pools opening one new journal at once: the first to switch it to
/// WAL holds a lock the others must wait for.
fn pools_opening_a_new_journal_at_once() {
    let dir = common::TempDir::new("journal-open");
    for round in 0..10 {
        let db = dir.0.join(format!("journal-{round}.db"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (db, barrier) = (db.clone(), std::sync::Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    Pool::builder().processes(1).journal(&db).build().map(drop)
                })
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().unwrap();
        }
    }
}

fn errors_and_outputs_that_no_longer_decode_run_again() {
    let dir = common::TempDir::new("journal-again");
    let db = dir.0.join("journal.db");
    let log = dir.0.join("runs.log");
    let log_text = log.to_string_lossy().into_owned();
    let pool = Pool::builder()
        .processes(2)
        .journal(&db)
        // Its task fails by a panic, on purpose: not a word of it here.
        .forward_stderr(false)
        .build()
        .unwrap();
    let map = |log: &String| -> Vec<Option<u64>> {
        pool.with_context(log)
            .map(square_but_three, 0..6u64)
            .unwrap()
            .map(Result::ok)
            .collect()
    };
    let expected = vec![Some(0), Some(1), Some(4), None, Some(16), Some(25)];
    assert_eq!(map(&log_text), expected);
    assert_eq!(common::runs(&log).len(), 6);
    // Only the error runs again.
    assert_eq!(map(&log_text), expected);
    assert_eq!(common::runs(&log)[6..], [3]);
    drop(pool);
    // Outputs of another type (here: garbage) count as missing.
    let connection = rusqlite::Connection::open(&db).unwrap();
    connection
        .execute("UPDATE outputs SET output = x'ff'", [])
        .unwrap();
    drop(connection);
    let pool = Pool::builder()
        .processes(2)
        .journal(&db)
        // Its task fails by a panic, on purpose: not a word of it here.
        .forward_stderr(false)
        .build()
        .unwrap();
    let results: Vec<Option<u64>> = pool
        .with_context(&log_text)
        .map(square_but_three, 0..6u64)
        .unwrap()
        .map(Result::ok)
        .collect();
    assert_eq!(results, expected);
    assert_eq!(common::runs(&log).len(), 6 + 1 + 6);
    // Another context is another key.
    let other = dir.0.join("other.log").to_string_lossy().into_owned();
    let results: Vec<Option<u64>> = pool
        .with_context(&other)
        .map(square_but_three, 0..6u64)
        .unwrap()
        .map(Result::ok)
        .collect();
    assert_eq!(results, expected);
    assert_eq!(common::runs(Path::new(&other)).len(), 6);
}

fn dropping_the_pool_commits_every_output() {
    let dir = common::TempDir::new("journal-drop");
    let db = dir.0.join("journal.db");
    for round in 1..=3 {
        let pool = Pool::builder().processes(2).journal(&db).build().unwrap();
        let outputs = pool.map(cube, 0..20_000 * round).unwrap();
        assert!(
            outputs
                .map(Result::unwrap)
                .eq((0..20_000 * round).map(cube))
        );
        drop(pool);
        assert_eq!(integrity(&db), ("ok".to_owned(), 20_000 * round as i64));
    }
}

/// Keeps the message of every event.
#[derive(Clone, Default)]
struct Messages(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl tracing::field::Visit for Messages {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.lock().unwrap().push(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Messages {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        event.record(&mut self.clone());
    }
}

fn a_map_says_how_many_inputs_the_journal_answered() {
    use tracing_subscriber::layer::SubscriberExt;
    let dir = common::TempDir::new("journal-answered");
    let pool = Pool::builder()
        .processes(2)
        .journal(dir.0.join("journal.db"))
        .build()
        .unwrap();
    let messages = Messages::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("buckshot=info"))
        .with(messages.clone());
    tracing::subscriber::with_default(subscriber, || {
        for inputs in [0..30, 0..50, 10..20] {
            let outputs = pool.map(cube, inputs.clone()).unwrap();
            assert!(outputs.map(Result::unwrap).eq(inputs.map(cube)));
        }
    });
    assert_eq!(
        *messages.0.lock().unwrap(),
        [
            "map ended: 0 of 30 inputs answered from the journal",
            "map ended: 30 of 50 inputs answered from the journal",
            "map ended: 10 of 10 inputs answered from the journal",
        ]
    );
}

fn main() {
    if let Ok(spec) = std::env::var(DRIVER_ENV) {
        driver(&spec);
        return;
    }
    let tests: [(&str, fn()); 7] = [
        (
            "finished_outputs_are_committed_while_the_map_runs",
            finished_outputs_are_committed_while_the_map_runs,
        ),
        (
            "pools_opening_a_new_journal_at_once",
            pools_opening_a_new_journal_at_once,
        ),
        (
            "a_map_killed_halfway_resumes_where_it_stopped",
            a_map_killed_halfway_resumes_where_it_stopped,
        ),
        ("processes_share_a_journal", processes_share_a_journal),
        (
            "errors_and_outputs_that_no_longer_decode_run_again",
            errors_and_outputs_that_no_longer_decode_run_again,
        ),
        (
            "a_map_says_how_many_inputs_the_journal_answered",
            a_map_says_how_many_inputs_the_journal_answered,
        ),
        (
            "dropping_the_pool_commits_every_output",
            dropping_the_pool_commits_every_output,
        ),
    ];
    for (name, test) in tests {
        println!("test {name} ...");
        test();
        println!("test {name} ... ok");
    }
}
