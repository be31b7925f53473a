//! Tasks of one to four arguments: a task of several arguments takes the
//! tuple of them as its input, through every way of mapping or calling.

use buckshot::{Error, Pool};

fn scale(x: f64, by: f64) -> f64 {
    x * by
}
buckshot::register!(scale);

fn join3(a: String, b: u8, c: bool) -> String {
    format!("{a}-{b}-{c}")
}
buckshot::register!(join3);

fn sum4(a: u8, b: u16, c: u32, d: u64) -> u64 {
    u64::from(a) + u64::from(b) + u64::from(c) + d
}
buckshot::register!(sum4);

/// One argument that happens to be a tuple: still a one-argument task.
fn difference(pair: (i64, i64)) -> i64 {
    pair.0 - pair.1
}
buckshot::register!(difference);

fn unit_input(_: ()) -> u8 {
    7
}
buckshot::register!(unit_input);

#[test]
fn a_task_of_two_arguments_maps_over_pairs() {
    let pool = Pool::new(2).unwrap();
    let out: Vec<f64> = pool
        .map(scale, vec![(1.0, 2.0), (3.0, 4.0), (-1.5, 2.0)])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [2.0, 12.0, -3.0]);
}

#[test]
fn tasks_of_three_and_four_arguments() {
    let pool = Pool::new(2).unwrap();
    let out: Vec<String> = pool
        .map(
            join3,
            [("a".to_string(), 1, true), ("b".to_string(), 2, false)],
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, ["a-1-true", "b-2-false"]);
    assert_eq!(pool.call(sum4, (1, 2, 3, 4)).unwrap(), 10);
}

#[test]
fn a_one_argument_task_of_a_tuple_keeps_its_shape() {
    let pool = Pool::new(1).unwrap();
    let out: Vec<i64> = pool
        .map(difference, [(5, 3), (1, 10)])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [2, -9]);
    assert_eq!(pool.call(unit_input, ()).unwrap(), 7);
}

#[test]
fn every_entry_point_takes_every_shape() {
    let pool = Pool::new(2).unwrap();
    let mut unordered: Vec<(usize, f64)> = pool
        .map_unordered(scale, (0..100).map(|x| (f64::from(x), 2.0)))
        .unwrap()
        .map(|(index, result)| (index, result.unwrap()))
        .collect();
    unordered.sort_by_key(|&(index, _)| index);
    assert_eq!(unordered.len(), 100);
    assert!(unordered.iter().all(|&(i, x)| x == 2.0 * i as f64));
    let one_shot: Vec<u64> = buckshot::map(sum4, [(1, 1, 1, 1), (2, 2, 2, 2)])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(one_shot, [4, 8]);
}

#[test]
fn an_unregistered_task_of_several_arguments_is_named() {
    fn never_registered(a: u8, b: u8) -> u8 {
        a + b
    }
    let pool = Pool::new(1).unwrap();
    let error = pool.call(never_registered, (1, 2)).unwrap_err();
    assert!(
        matches!(&error, Error::NotRegistered { name, .. } if name.ends_with("never_registered")),
        "{error:?}"
    );
}
