//! Tasks are found wherever they are registered: another module, a library
//! crate the binary depends on, under an imported name, or generic.

use buckshot::{Error, Pool};
use buckshot_testlib::{double, reverse};

mod inner {
    pub mod deeper {
        pub fn shout(text: String) -> String {
            text.to_uppercase()
        }
        buckshot::register!(shout);
    }

    pub fn length(text: String) -> usize {
        text.len()
    }
}

// Registered under an imported name, away from its definition.
use inner::length;
buckshot::register!(length);

fn identity<T>(x: T) -> T {
    x
}
buckshot::register!(identity::<String>);
buckshot::register!(identity::<(u8, bool)>);

#[test]
fn a_task_registered_in_another_module() {
    let pool = Pool::new(1).unwrap();
    let out: Vec<String> = pool
        .map(inner::deeper::shout, ["a".to_string()])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, ["A"]);
}

#[test]
fn tasks_registered_in_a_library_crate() {
    let pool = Pool::new(2).unwrap();
    let out: Vec<String> = pool
        .map(reverse, ["abc".to_string(), "xy".to_string()])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, ["cba", "yx"]);
    let out: Vec<i64> = pool
        .map(double::<i64>, [-4, 21])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [-8, 42]);
}

#[test]
fn a_generic_task_is_registered_per_instantiation() {
    let pool = Pool::new(1).unwrap();
    let out: Vec<String> = pool
        .map(identity::<String>, ["s".to_string()])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, ["s"]);
    let out: Vec<(u8, bool)> = pool
        .map(identity::<(u8, bool)>, [(1, true)])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [(1, true)]);
    let error = pool.map(identity::<u32>, [1u32]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "task `registry::identity<u32>` is not registered (missing `buckshot::register!`?)"
    );
    // Registered in the library for i64 only.
    let error = pool.map(double::<i32>, [1i32]).unwrap_err();
    assert!(
        matches!(&error, Error::NotRegistered { name, .. } if name == "buckshot_testlib::double<i32>"),
        "expected NotRegistered for buckshot_testlib::double<i32>, got {error:?}"
    );
    assert_eq!(
        error.to_string(),
        "task `buckshot_testlib::double<i32>` is not registered (missing `buckshot::register!`?)"
    );
}

#[test]
fn a_task_registered_under_an_imported_name() {
    let pool = Pool::new(1).unwrap();
    let out: Vec<usize> = pool
        .map(length, ["four".to_string()])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [4]);
}
