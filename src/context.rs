//! Contexts: data that a pool sends once to each worker that needs it,
//! rather than with every input.
//!
//! [`Pool::with_context`] encodes the value once. A map of it sends the
//! encoded value to a worker before the first input that worker runs for
//! it, and never again to that worker (a replacement for a worker that
//! died gets it again). The worker decodes it once, the first time a task
//! reads it, and keeps it while the [`WithContext`] handle or a map of it
//! lives; after that, it drops it with the next input it gets (an idle
//! worker keeps it until then, or until it exits).
//!
//! A long value (from `bulk`'s threshold on) whose workers are local and
//! can map this process's memfds is encoded once into shared memory
//! instead: each worker is sent a few bytes that name it, and decodes from
//! a read-only mapping, with no copy through its pipe.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::pool::{MapStart, Pool, WithTimeout, task_position};
use crate::results::{Results, UnorderedResults};
use crate::shared::{MapTask, SharedContext};
use crate::stream::{CallFuture, MapStream};
use crate::task::Task;

/// A pool with a context: maps of tasks whose first argument is `&C` read
/// this value, sent once to each worker that runs them.
///
/// Made by [`Pool::with_context`]. Any number of maps may use one handle,
/// one after the other or at the same time, and maps with different
/// contexts may run on one pool at once; workers keep the value for all of
/// them while the handle or any of its maps lives.
///
/// A task keeps expensive state per worker (an index built from the
/// context, say) in a `static OnceLock`, built by the first input a worker
/// runs:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::OnceLock;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Words(Vec<String>);
///
/// fn lookup(words: &Words, word: String) -> Option<usize> {
///     // Built once per worker from the context, on first use.
///     static INDEX: OnceLock<HashMap<String, usize>> = OnceLock::new();
///     let index = INDEX.get_or_init(|| {
///         words.0.iter().enumerate().map(|(i, w)| (w.clone(), i)).collect()
///     });
///     index.get(&word).copied()
/// }
/// buckshot::register!(lookup);
///
/// # fn main() -> Result<(), buckshot::Error> {
/// let pool = buckshot::Pool::new(2)?;
/// let words = Words(["apple", "pear", "plum"].map(String::from).to_vec());
/// let ctx = pool.with_context(&words);
/// let found: Vec<Option<usize>> = ctx
///     .map(lookup, ["plum".to_string(), "fig".to_string()])?
///     .collect::<Result<_, _>>()?;
/// assert_eq!(found, [Some(2), None]);
/// # Ok(())
/// # }
/// ```
///
/// (Such a `static` outlives the context: a worker that later runs the same
/// task with another context must not reuse it. Key it by something in the
/// context when that can happen.)
pub struct WithContext<'a, C> {
    pool: &'a Pool,
    /// The encoded context, or why it could not be encoded.
    context: Result<Arc<SharedContext>, String>,
    /// The timeout of each input of its maps, if not the pool's.
    timeout: Option<Duration>,
    _value: PhantomData<fn(&C)>,
}

impl Pool {
    /// This pool with a context: `context` is encoded once, and sent once to
    /// each worker that runs a task of a map of the returned handle, whose
    /// first argument is `&C`.
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Rates {
    ///     tax: f64,
    /// }
    ///
    /// fn with_tax(rates: &Rates, price: f64) -> f64 {
    ///     price * (1.0 + rates.tax)
    /// }
    /// buckshot::register!(with_tax);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::new(2)?;
    /// let ctx = pool.with_context(&Rates { tax: 0.25 });
    /// assert_eq!(ctx.call(with_tax, 8.0)?, 10.0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A context that cannot be encoded, or encodes to more than the pool's
    /// frame limit, makes every map of the handle fail with
    /// [`Error::Context`].
    pub fn with_context<C: Serialize>(&self, context: &C) -> WithContext<'_, C> {
        let max = self.max_frame_bytes() as usize;
        let encoded = self
            .running()
            .shared()
            .new_context(|out| {
                crate::protocol::encode_with(context, out).map_err(|e| e.to_string())
            })
            .and_then(|context| {
                if context.bytes() > max {
                    Err(format!(
                        "it encodes to {} bytes, over the frame limit of {max}",
                        context.bytes()
                    ))
                } else {
                    Ok(context)
                }
            });
        WithContext {
            pool: self,
            context: encoded,
            timeout: None,
            _value: PhantomData,
        }
    }
}

impl<'a> WithTimeout<'a> {
    /// This handle with a context: maps of the returned handle read
    /// `context` (as with [`Pool::with_context`]), and each of their inputs
    /// may run for this handle's timeout. The same as
    /// `pool.with_context(context).with_timeout(timeout)`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Rates {
    ///     tax: f64,
    /// }
    ///
    /// fn with_tax(rates: &Rates, price: f64) -> f64 {
    ///     price * (1.0 + rates.tax)
    /// }
    /// buckshot::register!(with_tax);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::new(2)?;
    /// let quick = pool.with_timeout(Duration::from_secs(5));
    /// assert_eq!(quick.with_context(&Rates { tax: 0.25 }).call(with_tax, 8.0)?, 10.0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_context<C: Serialize>(&self, context: &C) -> WithContext<'a, C> {
        WithContext {
            timeout: Some(self.timeout()),
            ..self.pool().with_context(context)
        }
    }
}

impl<'a, C> WithContext<'a, C> {
    /// This handle with a timeout of its own: each input of a map or call
    /// of the returned handle, which reads the same context (encoded
    /// once), may run for `timeout` instead of the pool's (see
    /// [`Pool::with_timeout`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Limit(u64);
    ///
    /// fn nap_below(limit: &Limit, ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms.min(limit.0)));
    ///     ms
    /// }
    /// buckshot::register!(nap_below);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::new(2)?;
    /// let ctx = pool.with_context(&Limit(60_000));
    /// let quick = ctx.with_timeout(Duration::from_millis(200));
    /// assert!(quick.call(nap_below, 60_000).unwrap_err().is_timeout());
    /// assert_eq!(ctx.call(nap_below, 300)?, 300); // no timeout
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A `timeout` of zero makes every map of the returned handle fail
    /// with [`Error::Config`].
    pub fn with_timeout(&self, timeout: Duration) -> WithContext<'a, C> {
        WithContext {
            pool: self.pool,
            context: self.context.clone(),
            timeout: Some(timeout),
            _value: PhantomData,
        }
    }

    /// The timeout of each input of this handle's maps, if it has one of
    /// its own (else the pool's applies).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// A map of `f`, a task that reads this context, on the pool.
    fn map_start<F: 'static>(&self, f: &F) -> MapStart<'_> {
        MapStart {
            shared: self.pool.running().shared(),
            task: self.task(f),
        }
        .timed(self.timeout)
    }

    fn task<F: 'static>(&self, f: &F) -> Result<MapTask, Error> {
        let context = self.context.as_ref().map_err(|message| Error::Context {
            message: message.clone(),
        })?;
        Ok(MapTask {
            position: task_position(f)?,
            context: Some(Arc::clone(context)),
            timeout: None,
        })
    }

    /// Like [`Pool::map`], for a task that reads this context.
    ///
    /// # Errors
    ///
    /// As for [`Pool::map`], [`Error::Context`] if the context could not
    /// be encoded, and [`Error::Config`] if the handle's timeout is zero.
    pub fn map<F, M, It>(&self, f: F, inputs: It) -> Result<Results<It::IntoIter, F::Output>, Error>
    where
        F: Task<M, Context = C>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).ordered(inputs.into_iter())
    }

    /// Like [`Pool::map_unordered`], for a task that reads this context.
    ///
    /// # Errors
    ///
    /// As for [`WithContext::map`].
    pub fn map_unordered<F, M, It>(
        &self,
        f: F,
        inputs: It,
    ) -> Result<UnorderedResults<It::IntoIter, F::Output>, Error>
    where
        F: Task<M, Context = C>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).unordered(inputs.into_iter())
    }

    /// Like [`Pool::call`], for a task that reads this context.
    ///
    /// # Errors
    ///
    /// As for [`WithContext::map`], and the input's own error if it failed.
    pub fn call<F, M>(&self, f: F, input: F::Input) -> Result<F::Output, Error>
    where
        F: Task<M, Context = C>,
    {
        self.map_start(&f).call(input)
    }

    /// Like [`Pool::map_stream`], for a task that reads this context.
    ///
    /// # Errors
    ///
    /// As for [`WithContext::map`].
    pub fn map_stream<F, M, It>(
        &self,
        f: F,
        inputs: It,
    ) -> Result<MapStream<It::IntoIter, F::Output>, Error>
    where
        F: Task<M, Context = C>,
        It: IntoIterator<Item = F::Input>,
    {
        self.map_start(&f).stream(inputs.into_iter())
    }

    /// Like [`Pool::call_async`], for a task that reads this context.
    ///
    /// # Errors
    ///
    /// The future resolves to an error where [`WithContext::call`] would
    /// return one.
    pub fn call_async<F, M>(&self, f: F, input: F::Input) -> CallFuture<F::Input, F::Output>
    where
        F: Task<M, Context = C>,
    {
        self.map_start(&f).call_async(input)
    }
}

impl<C> std::fmt::Debug for WithContext<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("WithContext");
        match &self.context {
            Ok(context) => debug.field("bytes", &context.bytes()),
            Err(message) => debug.field("error", message),
        };
        if let Some(timeout) = &self.timeout {
            debug.field("timeout", timeout);
        }
        debug.finish()
    }
}
