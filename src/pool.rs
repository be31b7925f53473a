//! [`Pool`] and the one-shot [`map`]; [`crate::builder`] configures a pool.

use std::any::type_name;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::builder::PoolBuilder;
use crate::config::Config;
use crate::error::Error;
use crate::hooks::Plugins;
use crate::journal::Journal;
use crate::registry::registry;
use crate::results::{Results, UnorderedResults};
use crate::sandbox::SandboxRule;
use crate::scheduler::Running;
use crate::shared::{MapTask, Shared};
use crate::stream::{CallFuture, MapStream};
use crate::task::PlainTask;

/// A pool of worker processes that run registered functions.
///
/// Workers are copies of the current binary, started at once by
/// [`PoolBuilder::build`] and kept running between maps (or, with an
/// [`idle_timeout`](PoolBuilder::idle_timeout), until they have had
/// nothing to do for that long; they start again when work comes). A pool is `Send` and
/// `Sync`: several threads may map on it at the same time and share its
/// workers.
///
/// Dropping the pool kills and reaps every worker. Maps still running on
/// other threads then yield [`Error::PoolClosed`] for their unfinished inputs.
pub struct Pool {
    running: Running,
    /// The sandbox rules in force in every worker.
    sandbox_rules: Vec<SandboxRule>,
    /// The journal, if the pool keeps one: for its counts.
    #[cfg_attr(not(feature = "journal"), allow(dead_code))]
    journal: Option<Arc<Journal>>,
}

impl Pool {
    /// A pool of `processes` workers with default settings.
    ///
    /// # Errors
    ///
    /// As for [`PoolBuilder::build`], whose [`Error::Config`] includes a
    /// `processes` of 0.
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// A builder to configure a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes the pool keeps: at most, with an
    /// [`idle_timeout`](PoolBuilder::idle_timeout).
    pub fn processes(&self) -> usize {
        self.running.shared().config.processes
    }

    /// The sandbox rules in force in every worker: those asked for, or
    /// with [`Sandbox::best_effort`](crate::Sandbox::best_effort) those of them that came up.
    pub fn sandbox_rules(&self) -> &[SandboxRule] {
        &self.sandbox_rules
    }

    /// The per-task timeout, if any (maps of a
    /// [`with_timeout`](Pool::with_timeout) handle have their own).
    pub fn timeout(&self) -> Option<Duration> {
        self.running.shared().config.timeout
    }

    /// This pool with a timeout of its own: each input of a map or call of
    /// the returned handle may run for `timeout`, instead of the pool's
    /// [`timeout`](PoolBuilder::timeout) (whether the pool has one or
    /// not). An input past it yields [`Error::TaskTimeout`] carrying
    /// `timeout`; its worker is killed and replaced, as with the pool's.
    /// Maps running at the same time on the pool keep their own timeouts.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    /// buckshot::register!(nap);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::new(2)?; // no timeout of its own
    /// let quick = pool.with_timeout(Duration::from_millis(200));
    /// assert_eq!(quick.call(nap, 10)?, 10);
    /// let error = quick.call(nap, 60_000).unwrap_err();
    /// assert!(error.is_timeout(), "{error}");
    /// // Other maps of the pool have no timeout.
    /// assert_eq!(pool.call(nap, 300)?, 300);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// The handle is cheap ([`Copy`]); make one per timeout you need. For
    /// a task that reads a context, see [`WithTimeout::with_context`] (or
    /// [`WithContext::with_timeout`](crate::WithContext::with_timeout)).
    /// A timeout too large to count to never fires
    /// ([`Duration::MAX`] lifts the pool's for these maps).
    ///
    /// A `timeout` of zero makes every map of the handle fail with
    /// [`Error::Config`], as [`PoolBuilder::timeout`] does at build.
    pub fn with_timeout(&self, timeout: Duration) -> WithTimeout<'_> {
        WithTimeout {
            pool: self,
            timeout,
        }
    }

    /// How many `Ok` outputs of this pool's maps its
    /// [journal](PoolBuilder::journal) did not record (they run again next
    /// time): those left out while more than 64 MiB of outputs waited to
    /// be written, and those of transactions that failed (a full disk, a
    /// lock held by another process past 10 s). An output left out is
    /// counted before its map yields it; one whose transaction fails, when
    /// it fails (milliseconds after it was yielded, or seconds while
    /// another process holds the lock). 0 without a journal, and so
    /// always 0 without the cargo feature `journal`.
    #[cfg_attr(docsrs, doc(cfg(feature = "journal")))]
    pub fn journal_unrecorded(&self) -> u64 {
        #[cfg(feature = "journal")]
        if let Some(journal) = &self.journal {
            return journal.unrecorded();
        }
        0
    }

    /// Starts the workers of a checked configuration.
    pub(crate) fn start(
        config: Config,
        plugins: Plugins,
        sandbox_rules: Vec<SandboxRule>,
        journal: Option<Arc<Journal>>,
    ) -> Result<Pool, Error> {
        Ok(Pool {
            running: Running::start(config, plugins)?,
            sandbox_rules,
            journal,
        })
    }

    pub(crate) fn running(&self) -> &Running {
        &self.running
    }

    pub(crate) fn max_frame_bytes(&self) -> u32 {
        self.running.shared().config.max_frame_bytes
    }

    /// Calls `f` on every input in a worker process and yields one result
    /// per input, in input order.
    ///
    /// `f` must be a function registered with [`register!`](crate::register).
    /// A function of several arguments takes the tuple of them as its input
    /// (see [`Task`](crate::Task)). Inputs are pulled lazily as workers need them, and
    /// only a bounded number are buffered, so `inputs` may be endless. A
    /// task that panics, times out or kills its worker yields an error for
    /// its input alone.
    ///
    /// ```
    /// use buckshot::{Error, Pool};
    ///
    /// fn parse(text: String) -> u32 {
    ///     text.trim().parse().expect("a number")
    /// }
    /// buckshot::register!(parse);
    ///
    /// fn main() -> Result<(), Error> {
    ///     let pool = Pool::new(2)?;
    ///     let texts = ["1", " 2", "three"].map(String::from);
    ///     let results: Vec<Result<u32, Error>> = pool.map(parse, texts)?.collect();
    ///     assert_eq!(results[0].as_ref().ok(), Some(&1));
    ///     assert_eq!(results[1].as_ref().ok(), Some(&2));
    ///     // The panic fails its own input, and the map goes on.
    ///     assert!(results[2].as_ref().is_err_and(|e| e.is_panic() && e.index() == Some(2)));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] if `f` was not registered (closures and fn
    /// pointers cannot be), [`Error::Startup`] if the pool's workers cannot
    /// start.
    pub fn map<F, M, It>(&self, f: F, inputs: It) -> Result<Results<It::IntoIter, F::Output>, Error>
    where
        F: PlainTask<M>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).ordered(inputs.into_iter())
    }

    /// Like [`Pool::map`], but yields each result as soon as it is ready,
    /// with the position of its input.
    ///
    /// # Errors
    ///
    /// As for [`Pool::map`].
    pub fn map_unordered<F, M, It>(
        &self,
        f: F,
        inputs: It,
    ) -> Result<UnorderedResults<It::IntoIter, F::Output>, Error>
    where
        F: PlainTask<M>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).unordered(inputs.into_iter())
    }

    /// Calls `f` on one input in a worker process, as a map of that one
    /// input would: a task that panics, times out or kills its worker
    /// yields an error (with index 0), and the pool goes on. Many threads
    /// may call on one pool at once.
    ///
    /// ```
    /// fn add(a: u64, b: u64) -> u64 {
    ///     a + b
    /// }
    /// buckshot::register!(add);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::new(1)?;
    /// assert_eq!(pool.call(add, (2, 3))?, 5);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Pool::map`], and the input's own error if it failed.
    pub fn call<F, M>(&self, f: F, input: F::Input) -> Result<F::Output, Error>
    where
        F: PlainTask<M>,
    {
        self.map_start(&f).call(input)
    }

    /// Like [`Pool::map`], as a [`Stream`](futures_core::Stream): polling it
    /// never blocks the thread, so an async runtime keeps running its other
    /// tasks while the map runs in workers. Any executor will do.
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    /// buckshot::register!(square);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::new(2)?;
    /// let squares = futures::executor::block_on(async {
    ///     let stream = pool.map_stream(square, 1..=4)?;
    ///     stream.collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<u64>, _>>()
    /// })?;
    /// assert_eq!(squares, [1, 4, 9, 16]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Dropping the stream cancels the rest of the map, as dropping
    /// [`Results`] does. It owns what it needs, so it may outlive this
    /// borrow (be moved into a spawned task); if the pool is dropped first,
    /// the inputs it did not answer fail with [`Error::PoolClosed`].
    ///
    /// # Errors
    ///
    /// As for [`Pool::map`].
    pub fn map_stream<F, M, It>(
        &self,
        f: F,
        inputs: It,
    ) -> Result<MapStream<It::IntoIter, F::Output>, Error>
    where
        F: PlainTask<M>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).stream(inputs.into_iter())
    }

    /// Like [`Pool::call`], as a [`Future`](std::future::Future) that never
    /// blocks the thread polling it. Dropping it before it is ready cancels
    /// the call (the worker running it is killed and replaced).
    ///
    /// ```
    /// fn add(a: u64, b: u64) -> u64 {
    ///     a + b
    /// }
    /// buckshot::register!(add);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::new(1)?;
    /// let sum = futures::executor::block_on(pool.call_async(add, (2, 3)))?;
    /// assert_eq!(sum, 5);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The future resolves to an error where [`Pool::call`] would return
    /// one: [`Error::NotRegistered`] if `f` was not registered,
    /// [`Error::Startup`] if the pool's workers cannot start, and the
    /// input's own error if it failed. Calling never fails by itself.
    pub fn call_async<F, M>(&self, f: F, input: F::Input) -> CallFuture<F::Input, F::Output>
    where
        F: PlainTask<M>,
    {
        self.map_start(&f).call_async(input)
    }

    /// A map of the plain task `f` on this pool.
    fn map_start<F: 'static>(&self, f: &F) -> MapStart<'_> {
        MapStart {
            shared: self.running.shared(),
            task: task_position(f).map(MapTask::plain),
        }
    }
}

/// A pool with a timeout of its own for its maps and calls, made by
/// [`Pool::with_timeout`]: each input of a map or call of this handle may
/// run for [`timeout`](WithTimeout::timeout), instead of the pool's.
///
/// It has the pool's five entry points, which run on the pool's workers,
/// beside its other maps.
#[derive(Clone, Copy)]
pub struct WithTimeout<'a> {
    pool: &'a Pool,
    timeout: Duration,
}

impl<'a> WithTimeout<'a> {
    /// The timeout of each input of this handle's maps.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The pool it maps on.
    pub(crate) fn pool(&self) -> &'a Pool {
        self.pool
    }

    fn map_start<F: 'static>(&self, f: &F) -> MapStart<'a> {
        self.pool.map_start(f).timed(Some(self.timeout))
    }

    /// Like [`Pool::map`], each input with this handle's timeout.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    /// buckshot::register!(nap);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::builder()
    ///     .processes(2)
    ///     .timeout(Duration::from_secs(60))
    ///     .build()?;
    /// let results: Vec<_> = pool
    ///     .with_timeout(Duration::from_millis(300))
    ///     .map(nap, [1, 60_000, 2])?
    ///     .collect();
    /// assert_eq!(*results[0].as_ref().unwrap(), 1);
    /// match &results[1] {
    ///     Err(buckshot::Error::TaskTimeout { index, timeout, .. }) => {
    ///         assert_eq!((*index, *timeout), (1, Duration::from_millis(300)));
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// assert_eq!(*results[2].as_ref().unwrap(), 2);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Pool::map`], and [`Error::Config`] if the timeout is zero.
    pub fn map<F, M, It>(&self, f: F, inputs: It) -> Result<Results<It::IntoIter, F::Output>, Error>
    where
        F: PlainTask<M>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).ordered(inputs.into_iter())
    }

    /// Like [`Pool::map_unordered`], each input with this handle's
    /// timeout.
    ///
    /// # Errors
    ///
    /// As for [`WithTimeout::map`].
    pub fn map_unordered<F, M, It>(
        &self,
        f: F,
        inputs: It,
    ) -> Result<UnorderedResults<It::IntoIter, F::Output>, Error>
    where
        F: PlainTask<M>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).unordered(inputs.into_iter())
    }

    /// Like [`Pool::call`], with this handle's timeout.
    ///
    /// # Errors
    ///
    /// As for [`WithTimeout::map`], and the input's own error if it failed
    /// ([`Error::TaskTimeout`] if it ran past the timeout).
    pub fn call<F, M>(&self, f: F, input: F::Input) -> Result<F::Output, Error>
    where
        F: PlainTask<M>,
    {
        self.map_start(&f).call(input)
    }

    /// Like [`Pool::map_stream`], each input with this handle's timeout.
    ///
    /// # Errors
    ///
    /// As for [`WithTimeout::map`].
    pub fn map_stream<F, M, It>(
        &self,
        f: F,
        inputs: It,
    ) -> Result<MapStream<It::IntoIter, F::Output>, Error>
    where
        F: PlainTask<M>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).stream(inputs.into_iter())
    }

    /// Like [`Pool::call_async`], with this handle's timeout.
    ///
    /// # Errors
    ///
    /// The future resolves to an error where [`WithTimeout::call`] would
    /// return one.
    pub fn call_async<F, M>(&self, f: F, input: F::Input) -> CallFuture<F::Input, F::Output>
    where
        F: PlainTask<M>,
    {
        self.map_start(&f).call_async(input)
    }
}

impl std::fmt::Debug for WithTimeout<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithTimeout")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A map about to start: the pool it runs on, and its task or why it
/// cannot run. The entry points of [`Pool`] and
/// [`WithContext`](crate::WithContext) differ only in how they name the
/// task; the rest they share through this.
pub(crate) struct MapStart<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) task: Result<MapTask, Error>,
}

impl MapStart<'_> {
    /// The same map, each of its inputs with `timeout` instead of the
    /// pool's, if given; a zero timeout fails it, as it fails a build.
    pub(crate) fn timed(mut self, timeout: Option<Duration>) -> Self {
        let Some(timeout) = timeout else {
            return self;
        };
        self.task = self.task.and_then(|mut task| {
            if timeout.is_zero() {
                return Err(Error::Config {
                    message: "with_timeout must be greater than zero".to_owned(),
                });
            }
            task.timeout = Some(timeout);
            Ok(task)
        });
        self
    }

    /// The map's results in input order ([`Pool::map`]).
    pub(crate) fn ordered<It, O>(self, inputs: It) -> Result<Results<It, O>, Error>
    where
        It: Iterator,
        It::Item: Serialize,
        O: DeserializeOwned,
    {
        Results::new(self.shared, self.task?, inputs)
    }

    /// The map's results as they finish ([`Pool::map_unordered`]).
    pub(crate) fn unordered<It, O>(self, inputs: It) -> Result<UnorderedResults<It, O>, Error>
    where
        It: Iterator,
        It::Item: Serialize,
        O: DeserializeOwned,
    {
        UnorderedResults::new(self.shared, self.task?, inputs)
    }

    /// The one result of a map of `input` ([`Pool::call`]).
    pub(crate) fn call<I, O>(self, input: I) -> Result<O, Error>
    where
        I: Serialize,
        O: DeserializeOwned,
    {
        self.ordered(std::iter::once(input))?
            .next()
            .expect("a map of one input yields one result")
    }

    /// The map's results as a stream ([`Pool::map_stream`]).
    pub(crate) fn stream<It, O>(self, inputs: It) -> Result<MapStream<It, O>, Error>
    where
        It: Iterator,
        It::Item: Serialize,
        O: DeserializeOwned,
    {
        MapStream::new(self.shared, self.task?, inputs)
    }

    /// The one result of a map of `input`, as a future that holds any
    /// error until it is polled ([`Pool::call_async`]).
    pub(crate) fn call_async<I, O>(self, input: I) -> CallFuture<I, O>
    where
        I: Serialize,
        O: DeserializeOwned,
    {
        CallFuture::new(self.shared, self.task, input)
    }
}

// A panic elsewhere never leaves the pool half-updated: its state sits behind
// a lock that tolerates poisoning, and its thread is joined only on drop.
impl std::panic::UnwindSafe for Pool {}
impl std::panic::RefUnwindSafe for Pool {}

pub(crate) fn task_position<F: 'static>(_: &F) -> Result<u32, Error> {
    registry()
        .position::<F>()
        .ok_or_else(|| Error::NotRegistered {
            name: type_name::<F>().to_owned(),
        })
}

/// Maps `f` over `inputs` on a new pool with default settings, which lives as
/// long as the returned iterator.
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
/// buckshot::register!(square);
///
/// # fn main() -> Result<(), buckshot::Error> {
/// let squares: Result<Vec<u64>, _> = buckshot::map(square, 1..=4)?.collect();
/// assert_eq!(squares?, [1, 4, 9, 16]);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As for [`Pool::map`], and those of [`PoolBuilder::build`] if the pool
/// cannot be started.
pub fn map<F, M, It>(f: F, inputs: It) -> Result<Results<It::IntoIter, F::Output>, Error>
where
    F: PlainTask<M>,
    It: IntoIterator<Item = F::Input>,
{
    let position = task_position(&f)?;
    let pool = Pool::builder().build()?;
    let start = MapStart {
        shared: pool.running.shared(),
        task: Ok(MapTask::plain(position)),
    };
    let results = start.ordered(inputs.into_iter())?;
    Ok(results.owning(pool.running))
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.running.shared();
        let state = shared.lock();
        f.debug_struct("Pool")
            .field("processes", &shared.config.processes)
            .field("timeout", &shared.config.timeout)
            .field("maps", &state.maps.len())
            .field("queued", &state.queued())
            .field("phase", &state.phase)
            .finish()
    }
}
