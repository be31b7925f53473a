//! Values that cannot be encoded or decoded fail their input alone.

use buckshot::{Error, Pool};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number whose encoding fails when it is 13.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unlucky(u64);

impl Serialize for Unlucky {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 refuses to be encoded"));
        }
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Unlucky {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(Unlucky)
    }
}

/// A number whose decoding fails when it is odd.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Even(u64);

impl<'de> Deserialize<'de> for Even {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        if n % 2 == 1 {
            return Err(serde::de::Error::custom(format!("{n} is odd")));
        }
        Ok(Even(n))
    }
}

fn echo_unlucky(x: Unlucky) -> Unlucky {
    x
}
buckshot::register!(echo_unlucky);

fn echo_even(x: Even) -> u64 {
    x.0
}
buckshot::register!(echo_even);

fn to_unlucky(x: u64) -> Unlucky {
    Unlucky(x)
}
buckshot::register!(to_unlucky);

fn to_even(x: u64) -> Even {
    Even(x)
}
buckshot::register!(to_even);

/// Exactly `len` results, of which only input `bad` failed, with `message`.
fn check_only(
    results: Vec<Result<impl std::fmt::Debug, Error>>,
    len: usize,
    bad: usize,
    message: &str,
) {
    assert_eq!(results.len(), len, "one result per input: {results:?}");
    for (index, result) in results.iter().enumerate() {
        match result {
            Err(error) if index == bad => assert_eq!(error.to_string(), message),
            Ok(_) if index != bad => {}
            other => panic!("input {index}: {other:?}"),
        }
    }
}

#[test]
fn an_input_that_cannot_be_encoded_is_never_sent() {
    let pool = Pool::new(1).unwrap();
    let results: Vec<_> = pool
        .map(echo_unlucky, (10..16).map(Unlucky))
        .unwrap()
        .collect();
    assert_eq!(results.len(), 6, "one result per input: {results:?}");
    let Err(error) = &results[3] else {
        panic!("input 3: {:?}", results[3])
    };
    assert_eq!(error.to_string(), "input 3: could not encode the input");
    assert_eq!(
        std::error::Error::source(error).unwrap().to_string(),
        "13 refuses to be encoded"
    );
    let others: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|v| v.0)
        .collect();
    assert_eq!(others, [10, 11, 12, 14, 15]);
}

#[test]
fn an_input_the_worker_cannot_decode() {
    let pool = Pool::new(1).unwrap();
    let results: Vec<_> = pool
        .map(echo_even, [Even(0), Even(3), Even(4)])
        .unwrap()
        .collect();
    check_only(
        results,
        3,
        1,
        "input 1: worker could not decode the input: 3 is odd",
    );
}

#[test]
fn an_output_the_worker_cannot_encode() {
    let pool = Pool::new(1).unwrap();
    let results: Vec<_> = pool.map(to_unlucky, 11..15u64).unwrap().collect();
    check_only(
        results,
        4,
        2,
        "input 2: worker could not encode the output: 13 refuses to be encoded",
    );
}

#[test]
fn an_output_the_pool_cannot_decode() {
    let pool = Pool::new(1).unwrap();
    let results: Vec<_> = pool.map(to_even, [2u64, 4, 7, 8]).unwrap().collect();
    assert_eq!(results.len(), 4, "one result per input: {results:?}");
    let messages: Vec<String> = results
        .iter()
        .map(|r| {
            r.as_ref()
                .map_or_else(ToString::to_string, |v| format!("{v:?}"))
        })
        .collect();
    assert_eq!(
        messages,
        [
            "Even(2)",
            "Even(4)",
            "input 2: could not decode the output",
            "Even(8)"
        ]
    );
    let Err(error) = &results[2] else {
        unreachable!()
    };
    assert_eq!(
        std::error::Error::source(error).unwrap().to_string(),
        "7 is odd"
    );
}

/// Inside a batch: the inputs encoded before it share its frame, and go as
/// one chunk without it.
#[test]
fn an_input_that_cannot_be_encoded_inside_a_batch_fails_alone() {
    let pool = Pool::builder().processes(1).batch_size(8).build().unwrap();
    let results: Vec<_> = pool
        .map(echo_unlucky, (10..26).map(Unlucky))
        .unwrap()
        .collect();
    let echoed: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|v| v.0)
        .collect();
    assert_eq!(echoed, (10..26).filter(|&x| x != 13).collect::<Vec<_>>());
    check_only(results, 16, 3, "input 3: could not encode the input");
}
