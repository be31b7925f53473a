//! The async calls: a map as a [`Stream`], a single call as a [`Future`].
//!
//! They share the iterators' machinery; only the wait differs. Where an
//! iterator blocks its thread on the map's deliveries, these leave the
//! task's waker with the map and return pending; the pool's thread wakes
//! it when outcomes arrive or the pool ends. No runtime is assumed.

use std::future::Future;
use std::iter::Once;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::feed::{Feed, Wait};
use crate::shared::{MapTask, Shared};

/// The outcomes of [`Pool::map_stream`](crate::Pool::map_stream), one per
/// input, in input order, as a [`Stream`].
///
/// Polling it never blocks the thread: inputs are pulled and handed to the
/// pool, and the task is woken when outcomes arrive. Dropping it before the
/// end cancels the rest of the map, as for [`Results`](crate::Results):
/// queued inputs are dropped and workers still running its inputs are
/// killed and replaced.
///
/// The input iterator is still an ordinary iterator, pulled on the polling
/// thread as workers need inputs: it should not block. A poll also encodes
/// the inputs it pulls and decodes the outputs that arrived, as an
/// iterator's `next` does: with large inputs that is real work on the
/// polling thread (at most 64 MiB of encoded inputs per poll).
#[must_use = "a stream does nothing unless polled"]
pub struct MapStream<It, O> {
    feed: Feed<It, O>,
}

// Nothing in it is pinned: polling moves no field out of place.
impl<It, O> Unpin for MapStream<It, O> {}

impl<It, O> MapStream<It, O>
where
    It: Iterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
    pub(crate) fn new(shared: &Arc<Shared>, task: MapTask, inputs: It) -> Result<Self, Error> {
        Ok(MapStream {
            feed: Feed::new(shared, task, inputs, false)?,
        })
    }
}

impl<It, O> Stream for MapStream<It, O>
where
    It: Iterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
    type Item = Result<O, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().feed.poll_ordered(&mut Wait::Poll(cx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.feed.size_hint()
    }
}

impl<It, O> std::fmt::Debug for MapStream<It, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.feed.debug("MapStream", f)
    }
}

/// The outcome of [`Pool::call_async`](crate::Pool::call_async), as a
/// [`Future`].
///
/// Dropping it before it is ready cancels the call: the input is dropped if
/// it is still queued, and the worker running it is killed and replaced.
#[must_use = "a future does nothing unless polled"]
pub struct CallFuture<I, O> {
    state: CallState<I, O>,
}

enum CallState<I, O> {
    Running(MapStream<Once<I>, O>),
    /// The call could not start; the error is taken by the first poll.
    Refused(Option<Error>),
}

// As for `MapStream`.
impl<I, O> Unpin for CallFuture<I, O> {}

impl<I, O> CallFuture<I, O>
where
    I: Serialize,
    O: DeserializeOwned,
{
    pub(crate) fn new(shared: &Arc<Shared>, task: Result<MapTask, Error>, input: I) -> Self {
        let state = match task.and_then(|task| MapStream::new(shared, task, std::iter::once(input)))
        {
            Ok(stream) => CallState::Running(stream),
            Err(error) => CallState::Refused(Some(error)),
        };
        CallFuture { state }
    }
}

impl<I, O> Future for CallFuture<I, O>
where
    I: Serialize,
    O: DeserializeOwned,
{
    type Output = Result<O, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            CallState::Running(stream) => match stream.feed.poll_ordered(&mut Wait::Poll(cx)) {
                Poll::Ready(Some(result)) => Poll::Ready(result),
                Poll::Ready(None) => panic!("CallFuture polled after it was ready"),
                Poll::Pending => Poll::Pending,
            },
            CallState::Refused(error) => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => panic!("CallFuture polled after it was ready"),
            },
        }
    }
}

impl<I, O> std::fmt::Debug for CallFuture<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            CallState::Running(stream) => stream.feed.debug("CallFuture", f),
            CallState::Refused(error) => f
                .debug_struct("CallFuture")
                .field("refused", error)
                .finish(),
        }
    }
}
