//! `map_unordered` with faults: a panic, an abort and a timeout among many
//! good inputs, in frames of several inputs. Every index comes back exactly
//! once, the bad ones with their own error and the others with their value.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use buckshot::{Error, Pool};

const INPUTS: usize = 5000;
const PANICS: u64 = 1000;
const ABORTS: u64 = 2500;
const HANGS: u64 = 4000;

fn triple_or_fail(x: u64) -> u64 {
    match x {
        PANICS => panic!("boom at {x}"),
        ABORTS => std::process::abort(),
        HANGS => common::hang(),
        _ => 3 * x,
    }
}
buckshot::register!(triple_or_fail);

#[test]
fn each_fault_fails_its_own_index_once() {
    // Room for the panicking input's backtrace: with `RUST_BACKTRACE` set,
    // the first one a fresh worker captures takes hundreds of milliseconds
    // on a loaded machine, and it is part of the input's run time.
    let timeout = Duration::from_secs(5);
    let pool = Pool::builder()
        .processes(2)
        .timeout(timeout)
        .forward_stderr(false)
        .build()
        .unwrap();
    let arrivals: Vec<(usize, Result<u64, Error>)> =
        common::within("an unordered map with faults", move || {
            pool.map_unordered(triple_or_fail, 0..INPUTS as u64)
                .unwrap()
                .collect()
        });
    assert_eq!(arrivals.len(), INPUTS, "one result per input");
    let mut seen: Vec<Option<Result<u64, Error>>> =
        std::iter::repeat_with(|| None).take(INPUTS).collect();
    for (index, result) in arrivals {
        assert!(index < INPUTS, "index {index} out of range: {result:?}");
        assert!(
            seen[index].is_none(),
            "input {index} answered twice: {:?}, then {result:?}",
            seen[index]
        );
        seen[index] = Some(result);
    }
    for (index, result) in seen.into_iter().enumerate() {
        let result = result.expect("every index seen once");
        match (index as u64, &result) {
            (
                PANICS,
                Err(Error::TaskPanicked {
                    index: i, message, ..
                }),
            ) => {
                assert_eq!((*i, message.as_str()), (index, "boom at 1000"));
            }
            (
                ABORTS,
                Err(Error::WorkerDied {
                    index: i, status, ..
                }),
            ) => {
                assert_eq!(
                    (*i, status.and_then(|s| s.signal())),
                    (index, Some(libc::SIGABRT))
                );
            }
            (
                HANGS,
                Err(Error::TaskTimeout {
                    index: i,
                    timeout: t,
                    ..
                }),
            ) => {
                assert_eq!((*i, *t), (index, timeout));
            }
            (PANICS | ABORTS | HANGS, other) => panic!("input {index}: {other:?}"),
            (x, Ok(value)) => assert_eq!(*value, 3 * x, "input {index}"),
            (_, Err(error)) => panic!("input {index}: {error}"),
        }
    }
}
