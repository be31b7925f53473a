//! The iterators a map returns: [`Results`] in input order,
//! [`UnorderedResults`] as outcomes arrive. Both are a [`Feed`] that
//! blocks its thread while it waits.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::feed::{Feed, Wait, blocking};
use crate::scheduler::Running;
use crate::shared::{MapTask, Shared};

/// The outcomes of [`Pool::map`](crate::Pool::map), one per input, in input order.
///
/// Inputs are pulled from the input iterator as workers need them. Dropping
/// this iterator before the end cancels the rest of the map: queued inputs
/// are dropped and workers still running its inputs are killed and replaced.
pub struct Results<It, O> {
    feed: Feed<It, O>,
    _output: PhantomData<fn() -> O>,
}

/// The outcomes of [`Pool::map_unordered`](crate::Pool::map_unordered), one per input, as they finish,
/// each with its input's position.
///
/// Dropping it before the end cancels the rest of the map, as for
/// [`Results`].
pub struct UnorderedResults<It, O> {
    feed: Feed<It, O>,
    _output: PhantomData<fn() -> O>,
}

impl<It, O> Results<It, O>
where
    It: Iterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
    pub(crate) fn new(shared: &Arc<Shared>, task: MapTask, inputs: It) -> Result<Self, Error> {
        Ok(Results {
            feed: Feed::new(shared, task, inputs, false)?,
            _output: PhantomData,
        })
    }

    /// Keeps `pool` running as long as the results (for one-shot maps).
    pub(crate) fn owning(mut self, pool: Running) -> Self {
        self.feed._pool = Some(pool);
        self
    }
}

impl<It, O> UnorderedResults<It, O>
where
    It: Iterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
    pub(crate) fn new(shared: &Arc<Shared>, task: MapTask, inputs: It) -> Result<Self, Error> {
        Ok(UnorderedResults {
            feed: Feed::new(shared, task, inputs, true)?,
            _output: PhantomData,
        })
    }
}

impl<It, O> Iterator for Results<It, O>
where
    It: Iterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
    type Item = Result<O, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        blocking(self.feed.poll_ordered(&mut Wait::Block))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.feed.size_hint()
    }
}

impl<It, O> Iterator for UnorderedResults<It, O>
where
    It: Iterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
    type Item = (usize, Result<O, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        blocking(self.feed.poll_unordered(&mut Wait::Block))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.feed.size_hint()
    }
}

// Exact when the inputs are, so that progress bars know their length.
impl<It, O> ExactSizeIterator for Results<It, O>
where
    It: ExactSizeIterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
}

impl<It, O> ExactSizeIterator for UnorderedResults<It, O>
where
    It: ExactSizeIterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
}

impl<It, O> std::fmt::Debug for Results<It, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.feed.debug("Results", f)
    }
}

impl<It, O> std::fmt::Debug for UnorderedResults<It, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.feed.debug("UnorderedResults", f)
    }
}
