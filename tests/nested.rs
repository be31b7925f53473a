//! A task may use a pool itself (the Python ancestor could not recurse).

use buckshot::Pool;

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

fn sum_of_squares(n: u64) -> u64 {
    let pool = Pool::new(2).expect("a pool inside a worker");
    pool.map(square, 0..n)
        .expect("nested map")
        .map(|r| r.expect("nested result"))
        .sum()
}
buckshot::register!(sum_of_squares);

/// Two levels down: a pool in a worker of a pool in a worker.
fn deep(n: u64) -> u64 {
    buckshot::map(sum_of_squares, [n])
        .unwrap()
        .map(Result::unwrap)
        .sum()
}
buckshot::register!(deep);

#[test]
fn a_task_maps_on_its_own_pool() {
    let pool = Pool::new(2).unwrap();
    let out: Vec<u64> = pool
        .map(sum_of_squares, [10u64, 100])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        out,
        [
            (0..10u64).map(square).sum::<u64>(),
            (0..100u64).map(square).sum()
        ]
    );
}

#[test]
fn pools_nest_two_levels_deep() {
    let pool = Pool::new(1).unwrap();
    let out: Vec<u64> = pool
        .map(deep, [5u64])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [30]);
}
