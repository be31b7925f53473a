//! The threads a worker starts, which a fresh process per input pays each
//! time: a local worker runs its tasks on its only thread where its
//! parent-death signal ends it with the pool (the portable backend has
//! none, and keeps a watchdog on its request stream).

mod common;

use buckshot::Pool;

fn threads_of_worker(_: u64) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}
buckshot::register!(threads_of_worker);

fn threads_in_tasks(pool: &Pool, inputs: u64) -> Vec<usize> {
    let results = pool.map(threads_of_worker, 0..inputs).unwrap();
    common::within("a map counting threads", move || {
        results.map(Result::unwrap).collect::<Vec<usize>>()
    })
}

#[test]
fn local_workers_start_no_thread_of_their_own() {
    // The watchdog, where nothing else ends a busy worker with its pool.
    let expected = if cfg!(buckshot_portable) { 2 } else { 1 };
    let pool = Pool::new(2).unwrap();
    let threads = threads_in_tasks(&pool, 4);
    assert_eq!(threads, vec![expected; 4], "threads of the workers");
    drop(pool);

    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let threads = threads_in_tasks(&pool, 6);
    assert_eq!(threads, vec![expected; 6], "threads of fresh workers");
}
