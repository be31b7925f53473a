//! The async calls: `map_stream` and `call_async` under tokio's
//! single-threaded runtime and under `futures::executor`, without blocking
//! the polling thread, cancelled by a drop, and `Send`.

mod common;

use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use buckshot::{Error, Pool};
use futures::{Stream, StreamExt};

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

fn scale(x: u64, by: u64) -> u64 {
    x * by
}
buckshot::register!(scale);

fn offset(base: &u64, x: u64) -> u64 {
    base + x
}
buckshot::register!(offset);

/// Waits until the file at `path` exists: something the polling thread
/// must do while the task runs.
fn wait_for_file(path: String) -> bool {
    while !Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}
buckshot::register!(wait_for_file);

fn announce_and_hang(path: String) -> u64 {
    common::announce(&path);
    common::hang()
}
buckshot::register!(announce_and_hang);

fn checked(x: u64) -> u64 {
    match x {
        1 => panic!("one is not allowed"),
        2 => std::process::abort(),
        3 => common::hang(),
        x => x,
    }
}
buckshot::register!(checked);

fn not_registered(x: u64) -> u64 {
    x
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_stream_yields_in_input_order_under_tokio() {
    let pool = Pool::new(2).unwrap();
    let squares: Vec<u64> = common::within("the stream", move || {
        current_thread().block_on(async {
            pool.map_stream(square, 0..1000u64)
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await
        })
    });
    assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn a_stream_and_a_call_work_under_futures_executor() {
    let pool = Pool::new(2).unwrap();
    common::within("the stream and the call", move || {
        futures::executor::block_on(async {
            let stream = pool.map_stream(scale, (0..200u64).map(|x| (x, 3))).unwrap();
            assert_eq!(stream.size_hint(), (200, Some(200)));
            let scaled: Vec<u64> = stream.map(Result::unwrap).collect().await;
            assert_eq!(scaled, (0..200u64).map(|x| x * 3).collect::<Vec<_>>());
            assert_eq!(pool.call_async(square, 12).await.unwrap(), 144);
            assert_eq!(pool.call_async(scale, (6, 7)).await.unwrap(), 42);
        })
    });
}

#[test]
fn polling_never_blocks_the_runtime_thread() {
    // Each task waits for a file that only another task on the same
    // single-threaded runtime creates, after the map has started: if
    // polling the stream (or the future) blocked the thread, that task
    // would never run and the tasks would time out.
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("buckshot-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (for_stream, for_call) = (dir.join("stream"), dir.join("call"));
    let _ = std::fs::remove_file(&for_stream);
    let _ = std::fs::remove_file(&for_call);
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let inputs = vec![path(&for_stream); 4];
    let call_input = path(&for_call);
    let (from_stream, from_call) = common::within("the map and the call", move || {
        current_thread().block_on(async move {
            let stream = pool.map_stream(wait_for_file, inputs).unwrap();
            let call = pool.call_async(wait_for_file, call_input);
            let creator = tokio::spawn(async move {
                std::fs::write(&for_stream, b"").unwrap();
                std::fs::write(&for_call, b"").unwrap();
            });
            let (from_stream, from_call) = tokio::join!(stream.collect::<Vec<_>>(), call);
            creator.await.unwrap();
            (from_stream, from_call)
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(from_stream.len(), 4);
    for result in from_stream {
        assert!(result.unwrap(), "a task that waited for the file");
    }
    assert!(from_call.unwrap());
}

#[test]
fn dropping_a_stream_kills_its_workers() {
    let pool = Pool::new(2).unwrap();
    let rendezvous = common::Rendezvous::new();
    let mut stream = pool
        .map_stream(announce_and_hang, vec![rendezvous.path(); 2])
        .unwrap();
    let first = futures::executor::block_on(futures::future::poll_fn(|cx| {
        Poll::Ready(stream.poll_next_unpin(cx))
    }));
    assert!(first.is_pending(), "hanging tasks have no outcome");
    let busy = [rendezvous.wait(), rendezvous.wait()];
    drop(stream);
    for pid in busy {
        common::assert_worker_gone(pid, "running a task of a dropped stream");
    }
    assert_eq!(pool.call(square, 3).unwrap(), 9, "the pool goes on");
}

#[test]
fn a_call_dropped_by_select_kills_its_worker() {
    let pool = Pool::new(1).unwrap();
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let (busy, pool) = common::within("the select", move || {
        let busy = current_thread().block_on(async {
            let announced = tokio::task::spawn_blocking(move || rendezvous.wait());
            tokio::select! {
                result = pool.call_async(announce_and_hang, path) => {
                    panic!("a hanging call returned {result:?}")
                }
                pid = announced => pid.unwrap(),
            }
        });
        (busy, pool)
    });
    common::assert_worker_gone(busy, "running a dropped call");
    assert_eq!(pool.call(square, 4).unwrap(), 16, "the pool goes on");
}

#[test]
fn async_calls_have_the_maps_fault_semantics() {
    let pool = Pool::builder()
        .processes(1)
        .timeout(Duration::from_millis(300))
        .forward_stderr(false)
        .build()
        .unwrap();
    common::within("the calls", move || {
        futures::executor::block_on(async {
            assert!(matches!(
                pool.call_async(checked, 1).await,
                Err(Error::TaskPanicked { index: 0, .. })
            ));
            assert!(matches!(
                pool.call_async(checked, 2).await,
                Err(Error::WorkerDied { index: 0, .. })
            ));
            assert!(matches!(
                pool.call_async(checked, 3).await,
                Err(Error::TaskTimeout { index: 0, .. })
            ));
            assert!(matches!(
                pool.call_async(not_registered, 3).await,
                Err(Error::NotRegistered { .. })
            ));
            let outcomes: Vec<_> = pool.map_stream(checked, [4, 1, 5]).unwrap().collect().await;
            assert!(matches!(
                outcomes.as_slice(),
                [Ok(4), Err(Error::TaskPanicked { index: 1, .. }), Ok(5)]
            ));
        })
    });
}

#[test]
fn a_stream_ends_when_its_pool_is_dropped() {
    let pool = Pool::new(1).unwrap();
    let rendezvous = common::Rendezvous::new();
    let stream = pool
        .map_stream(announce_and_hang, vec![rendezvous.path(); 3])
        .unwrap();
    let outcomes = common::within("the orphaned stream", move || {
        current_thread().block_on(async move {
            let collector = tokio::spawn(stream.collect::<Vec<_>>());
            let pid = tokio::task::spawn_blocking(move || rendezvous.wait())
                .await
                .unwrap();
            drop(pool);
            (pid, collector.await.unwrap())
        })
    });
    let (pid, outcomes) = outcomes;
    assert!(!common::alive(pid), "the dropped pool's worker is gone");
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Err(Error::PoolClosed { .. }))),
        "{outcomes:?}"
    );
}

#[test]
fn contexts_have_async_calls_too() {
    let pool = Pool::new(2).unwrap();
    common::within("the context's async calls", move || {
        futures::executor::block_on(async {
            let ctx = pool.with_context(&100u64);
            let shifted: Vec<u64> = ctx
                .map_stream(offset, 0..10u64)
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await;
            assert_eq!(shifted, (100..110).collect::<Vec<_>>());
            assert_eq!(ctx.call_async(offset, 5).await.unwrap(), 105);
        })
    });
}

#[test]
fn futures_and_streams_are_send() {
    fn send<T: Send + 'static>(_: &T) {}
    let pool = Pool::new(1).unwrap();
    let stream = pool.map_stream(square, vec![1u64, 2]).unwrap();
    let call = pool.call_async(scale, (2, 3));
    send(&stream);
    send(&call);
    // And a multi-threaded runtime runs them on its workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (squares, product) = common::within("spawned stream and call", move || {
        runtime.block_on(async {
            let squares = tokio::spawn(stream.map(Result::unwrap).collect::<Vec<_>>());
            let product = tokio::spawn(call);
            (squares.await.unwrap(), product.await.unwrap().unwrap())
        })
    });
    assert_eq!(squares, [1, 4]);
    assert_eq!(product, 6);
}
