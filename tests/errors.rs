//! What users see when something is wrong: exact messages.

use std::time::Duration;

use buckshot::{Error, Pool};

fn registered(x: u64) -> u64 {
    x
}
buckshot::register!(registered);

fn never_registered(x: u64) -> u64 {
    x
}

fn config_error(builder: buckshot::PoolBuilder) -> String {
    match builder.build() {
        Err(e @ Error::Config { .. }) => e.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn zero_processes_is_an_error() {
    assert_eq!(
        config_error(Pool::builder().processes(0)),
        "invalid pool configuration: processes must be at least 1"
    );
    assert!(matches!(Pool::new(0), Err(Error::Config { .. })));
}

#[test]
fn other_invalid_settings() {
    assert_eq!(
        config_error(Pool::builder().timeout(Duration::ZERO)),
        "invalid pool configuration: timeout must be greater than zero"
    );
    assert_eq!(
        config_error(Pool::builder().batch_size(0)),
        "invalid pool configuration: batch_size must be at least 1"
    );
    assert_eq!(
        config_error(Pool::builder().max_tasks_per_worker(0)),
        "invalid pool configuration: max_tasks_per_worker must be at least 1"
    );
}

#[test]
fn unregistered_functions_are_named() {
    let pool = Pool::new(1).unwrap();
    let error = pool.map(never_registered, [1u64]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "task `errors::never_registered` is not registered (missing `buckshot::register!`?)"
    );
    assert!(
        matches!(&error, Error::NotRegistered { name, .. } if name == "errors::never_registered")
    );
    assert_eq!(error.index(), None);
}

#[test]
fn closures_and_fn_pointers_cannot_be_registered() {
    let pool = Pool::new(1).unwrap();
    let closure = |x: u64| x + 1;
    let Err(Error::NotRegistered { name, .. }) = pool.map(closure, [1u64]) else {
        panic!("a closure was accepted")
    };
    assert!(name.contains("{{closure}}"), "{name}");
    let pointer: fn(u64) -> u64 = registered;
    let Err(Error::NotRegistered { name, .. }) = pool.map(pointer, [1u64]) else {
        panic!("a fn pointer was accepted")
    };
    assert_eq!(name, "fn(u64) -> u64");
}
