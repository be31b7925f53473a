//! The pool's end: events reach the creator's subscriber from a thread of
//! their own, behind a bounded queue, so that a slow or stalled subscriber
//! never holds up the pool's thread (timeouts, deliveries, respawns).
//!
//! The pool's thread runs with a subscriber whose sink is a [`PoolQueue`]: its own
//! life-cycle events (`tracing::debug!` in the scheduler) and the records
//! workers send both go into the queue. When the queue is full, events are
//! dropped and counted, and a warning says how many once there is room.
//! A worker's record goes into the queue as it came, encoded: the pool's
//! thread never decodes it (a worker flooding events would make every
//! turn of its loop slow), the forwarding thread does.
//!
//! A subscriber that panics on an event loses that event, not the ones
//! after it: the panic is caught and counted ([`Forwarder`]). The first
//! one is said on stderr at once; how many were lost, through the
//! subscriber when the pool closes.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use tracing::{Dispatch, Event};

use super::capture::to_record;
use super::reemit::reemit;
use super::{EventSink, Events, LogRecord, LogValue, filter_from_number};

/// Events waiting for the creator's subscriber, at most.
const QUEUE: usize = 256;
/// How long a pool's shutdown waits for the queue to drain, at most.
const DRAIN_BOUND: Duration = Duration::from_secs(1);

/// An event on its way to the subscriber.
enum Record {
    /// One of the pool's own.
    Made(LogRecord),
    /// A worker's, in CBOR as it sent it.
    Encoded(Vec<u8>),
}

struct Job {
    record: Record,
    worker: Option<u32>,
    input: Option<usize>,
}

/// The default subscriber of a pool's thread.
/// The sink of a pool's thread's subscriber: the queue to the thread
/// that re-emits events.
pub(crate) struct PoolQueue {
    queue: SyncSender<Job>,
    dropped: Arc<AtomicU64>,
    /// Says when the forwarding thread is done.
    done: Mutex<Receiver<()>>,
}

impl PoolQueue {
    /// Starts the thread that re-emits events to `dispatch`, for events at
    /// `level` (1 error ... 5 trace) and above; `None` for level 0 or if no
    /// thread can start (then nothing is forwarded).
    pub(crate) fn start(dispatch: Dispatch, level: u8) -> Option<Dispatch> {
        let max = filter_from_number(level);
        if max == LevelFilter::OFF {
            return None;
        }
        let (queue, jobs) = mpsc::sync_channel::<Job>(QUEUE);
        let (done_tx, done) = mpsc::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("buckshot-logs".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let mut forwarder = Forwarder::default();
                    for job in jobs {
                        forwarder.report_dropped(&lost);
                        forwarder.take(job);
                    }
                    forwarder.report_dropped(&lost);
                    forwarder.report_panicked();
                });
                let _ = done_tx.send(());
            })
            .ok()?;
        Some(Dispatch::new(Events {
            max,
            sink: PoolQueue {
                queue,
                dropped,
                done: Mutex::new(done),
            },
        }))
    }

    fn send(&self, job: Job) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(job) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Hands a worker's record to the pool's forwarder, if the current thread
/// is a pool's and forwards events.
pub(crate) fn from_worker(record: &[u8], worker: u32, input: Option<usize>) {
    let mut job = Some(Job {
        record: Record::Encoded(record.to_vec()),
        worker: Some(worker),
        input,
    });
    tracing::dispatcher::get_default(|dispatch| {
        if let (Some(pool), Some(job)) = (dispatch.downcast_ref::<Events<PoolQueue>>(), job.take())
        {
            pool.sink.send(job);
        }
    });
}

/// The forwarding thread's end: re-emits records, and counts those the
/// subscriber panicked on.
#[derive(Debug, Default)]
struct Forwarder {
    /// Events lost to a panic since the last report.
    panicked: u64,
    /// The first panic was said.
    said: bool,
}

impl Forwarder {
    /// Re-emits the record of `job`, decoding it if a worker sent it.
    fn take(&mut self, job: Job) {
        let record = match job.record {
            Record::Made(record) => record,
            Record::Encoded(bytes) => {
                match crate::protocol::decode(&bytes, &mut [0; crate::flow::SCRATCH_BYTES]) {
                    Ok(record) => record,
                    Err(e) => warning(format!(
                        "[buckshot: a worker sent a log event that is not one: {e}]"
                    )),
                }
            }
        };
        self.emit(record, job.worker, job.input);
    }

    /// Re-emits `record`; a panic of the subscriber loses it alone.
    fn emit(&mut self, record: LogRecord, worker: Option<u32>, input: Option<usize>) {
        let emitted = std::panic::catch_unwind(AssertUnwindSafe(|| reemit(record, worker, input)));
        if emitted.is_err() {
            if !std::mem::replace(&mut self.said, true) {
                eprintln!(
                    "buckshot: the tracing subscriber panicked on a log event; events it \
                     panics on are lost, counted, and the count reported when the pool closes"
                );
            }
            self.panicked += 1;
        }
    }

    /// Says, once there is room again, how many events were dropped.
    fn report_dropped(&mut self, dropped: &AtomicU64) {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            self.emit(
                warning(format!(
                    "[buckshot: {lost} worker log events dropped: the subscriber was too slow]"
                )),
                None,
                None,
            );
        }
    }

    /// Says how many events the subscriber panicked on, if any: through
    /// it, or on stderr if it panics on that too.
    fn report_panicked(&mut self) {
        let lost = std::mem::take(&mut self.panicked);
        if lost == 0 {
            return;
        }
        let message =
            format!("[buckshot: {lost} log events lost: the subscriber panicked on them]");
        self.emit(warning(message.clone()), None, None);
        if self.panicked > 0 {
            eprintln!("buckshot: {message}");
        }
    }
}

/// A warning of the pool's own, as a record.
fn warning(message: String) -> LogRecord {
    LogRecord {
        seq: None,
        level: super::level_number(tracing::Level::WARN),
        target: "buckshot::logs".to_owned(),
        module: None,
        file: None,
        line: None,
        fields: vec![("message".to_owned(), LogValue::Text(message))],
    }
}

impl Drop for PoolQueue {
    fn drop(&mut self) {
        // The queue closes with this; give the thread a moment to write
        // what is queued, but never wait on a stalled subscriber for long.
        let (closed, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.queue, closed));
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = done.recv_timeout(DRAIN_BOUND);
    }
}

impl EventSink for PoolQueue {
    fn take(&self, event: &Event<'_>) {
        self.send(Job {
            record: Record::Made(to_record(event, None)),
            worker: None,
            input: None,
        });
    }
}
