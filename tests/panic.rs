//! A task that panics fails its input alone; the worker lives on.

use buckshot::{Error, Pool};

fn fragile(x: u64) -> (u64, u32) {
    if x % 10 == 3 {
        panic!("boom at {x}");
    }
    (x, std::process::id())
}
buckshot::register!(fragile);

#[test]
fn panics_fail_their_input_and_the_worker_lives_on() {
    let pool = Pool::new(1).unwrap();
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
    let pool = Pool::new(1).unwrap();
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
