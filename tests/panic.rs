//! A task that panics fails its input alone; the worker lives on.

use buckshot::Error;

fn fragile(x: u64) -> (u64, u32) {
    if x % 10 == 3 {
        panic!("boom at {x}");
    }
    (x, std::process::id())
}
buckshot::register!(fragile);

#[test]
fn panics_fail_their_input_and_the_worker_lives_on() {
    let stderr = common::StderrLines::default();
    let pool = pool_of_one(&stderr);
    let results: Vec<_> = pool.map(fragile, 0..40u64).unwrap().collect();
    assert_eq!(results.len(), 40, "one result per input: {results:?}");
    let mut pids = Vec::new();
    for (x, result) in (0..40u64).zip(results) {
        match result {
            Ok((y, pid)) => {
                assert_eq!(x, y);
                pids.push(pid);
            }
            Err(Error::TaskPanicked {
                index,
                message,
                location,
                ..
            }) => {
                assert_eq!(index as u64, x);
                assert_eq!(message, format!("boom at {x}"));
                let location = location.expect("a panic says where");
                assert_eq!(
                    (location.file.as_str(), location.line, location.column),
                    ("tests/panic.rs", 7, 9)
                );
                assert_eq!(x % 10, 3);
            }
            Err(e) => panic!("input {x}: {e}"),
        }
    }
    assert_eq!(pids.len(), 36);
    pids.dedup();
    assert_eq!(pids.len(), 1, "the worker was replaced after a panic");
    // Each panic is said on the worker's stderr, as in any program.
    drop(pool);
    let lines = stderr.lines();
    let said = |text: &str| lines.iter().filter(|line| line.ends_with(text)).count();
    assert_eq!(said("panicked at tests/panic.rs:7:9:"), 4, "{lines:#?}");
    for x in [3, 13, 23, 33] {
        assert_eq!(said(&format!("boom at {x}")), 1, "{lines:#?}");
    }
}

fn caught_then_resumed(x: u64) -> u64 {
    // A panic the task catches itself, then another payload re-raised
    // without a hook call: the report must not borrow the first one's
    // place.
    let _ = std::panic::catch_unwind(|| panic!("caught inside"));
    if x == 1 {
        std::panic::resume_unwind(Box::new("resumed"));
    }
    x
}
buckshot::register!(caught_then_resumed);

#[test]
fn a_resumed_payload_is_not_given_an_earlier_panics_place() {
    let pool = pool_of_one(&common::StderrLines::default());
    match pool.call(caught_then_resumed, 1) {
        Err(Error::TaskPanicked {
            message, location, ..
        }) => {
            assert_eq!(message, "resumed");
            assert_eq!(location, None, "no hook ran for this payload");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.call(caught_then_resumed, 2).unwrap(), 2);
}

/// A value whose `Deserialize` panics when it reads `13`, and whose
/// `Serialize` panics when it writes `666`: code of the task's own types,
/// run by the worker around the task.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Touchy(u64);

impl serde::Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 666 {
            panic!("cannot write {}", self.0);
        }
        serializer.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <u64 as serde::Deserialize>::deserialize(deserializer)?;
        if value == 13 {
            panic!("cannot read {value}");
        }
        Ok(Touchy(value))
    }
}

/// Its output is 666 for input 6: that one cannot be written.
fn touchy_pid(x: Touchy) -> (Touchy, u32) {
    let out = if x.0 == 6 { 666 } else { x.0 };
    (Touchy(out), std::process::id())
}
buckshot::register!(touchy_pid);

fn context_pid(context: &Touchy, x: u64) -> (u64, u32) {
    (context.0 + x, std::process::id())
}
buckshot::register!(context_pid);

/// What a panic report says, or the value.
fn panic_message<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::TaskPanicked {
            message, location, ..
        }) => {
            let location = location.expect("a panic says where");
            format!("{message} at line {}", location.line)
        }
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[test]
fn a_panicking_deserialize_or_serialize_is_the_tasks_panic_and_the_worker_lives() {
    let pool = pool_of_one(&common::StderrLines::default());
    let inputs = [1u64, 13, 6, 2].map(Touchy);
    let results: Vec<_> = pool.map(touchy_pid, inputs).unwrap().collect();
    assert_eq!(results.len(), 4, "{results:?}");
    let mut results = results.into_iter();
    let (one, pid) = results.next().unwrap().unwrap();
    assert_eq!(one, Touchy(1));
    assert_eq!(
        panic_message(results.next().unwrap()),
        "cannot read 13 at line 103"
    );
    assert_eq!(
        panic_message(results.next().unwrap()),
        "cannot write 666 at line 93"
    );
    let (two, same_pid) = results.next().unwrap().unwrap();
    assert_eq!(two, Touchy(2));
    assert_eq!(same_pid, pid, "the worker lived on");
}

#[test]
fn a_context_whose_deserialize_panics_fails_each_input_and_the_worker_lives() {
    let pool = pool_of_one(&common::StderrLines::default());
    let before = pool.call(pid_of, 0).unwrap();
    let results: Vec<_> = pool
        .with_context(&Touchy(13))
        .map(context_pid, [1u64, 2])
        .unwrap()
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    for result in results {
        assert_eq!(panic_message(result), "cannot read 13 at line 103");
    }
    let results: Vec<_> = pool
        .with_context(&Touchy(40))
        .map(context_pid, [2u64])
        .unwrap()
        .collect();
    assert_eq!(results.len(), 1);
    let (sum, pid) = results.into_iter().next().unwrap().unwrap();
    assert_eq!((sum, pid), (42, before), "the worker lived on");
}

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

// Below the tasks, whose panics' lines are pinned above.
mod common;

/// A pool of one worker whose stderr lines `stderr` keeps: the workers'
/// panics are said there, and a test that passes prints none of them.
fn pool_of_one(stderr: &common::StderrLines) -> buckshot::Pool {
    stderr.builder().processes(1).build().unwrap()
}
