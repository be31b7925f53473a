//! A run of consecutive inputs of one map, encoded as one RUN frame: what
//! callers hand the pool, and what its observers see answered or failed.

use std::sync::Arc;
use std::time::Duration;

use crate::bulk::Segment;
use crate::protocol::{self, Items, RunFrame};

/// The encoded value in a CONTEXT frame.
pub(crate) fn context_value(frame: &[u8]) -> Option<&[u8]> {
    protocol::parse_context(&frame[protocol::LEN_BYTES..])
        .ok()
        .map(|(_, value)| value)
}

/// A run of consecutive inputs of one map, encoded as one RUN frame.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub map: u64,
    pub task: u32,
    /// The context its task reads, 0 for none.
    pub context: u64,
    pub first_index: usize,
    pub count: u32,
    /// A finished RUN frame; its sequence number is stamped on dispatch.
    pub frame: Vec<u8>,
    /// How many times these inputs were already given to a worker that
    /// died running them.
    pub attempts: u32,
    /// How many times they came back from a worker that went before taking
    /// any of them.
    pub returns: u32,
    /// The segments its items' long strings are in: kept until the chunk
    /// is answered or dropped, so that no worker reads a reused one.
    pub bulk: Vec<Arc<Segment>>,
    /// The CONTEXT frame of the context its task reads, if any: what an
    /// observer needs of it after the context is gone.
    pub context_frame: Option<Arc<Vec<u8>>>,
    /// How long each of its inputs may run: its map's timeout, else the
    /// pool's. The pool's thread keeps its deadlines by it.
    pub timeout: Option<Duration>,
}

impl Chunk {
    pub(crate) fn items(&self) -> &[u8] {
        protocol::run_items(&self.frame)
    }

    /// The encoded input of a chunk of one.
    pub(crate) fn only_item(&self) -> &[u8] {
        Items::new(self.items())
            .next()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    fn part(&self, first_index: usize, count: u32, items: &[u8]) -> Chunk {
        Chunk {
            map: self.map,
            task: self.task,
            context: self.context,
            first_index,
            count,
            frame: RunFrame::from_items(self.task, self.context, count, items),
            attempts: self.attempts,
            returns: self.returns,
            bulk: self.bulk.clone(),
            context_frame: self.context_frame.clone(),
            timeout: self.timeout,
        }
    }

    /// One chunk per item.
    pub(crate) fn singletons(self) -> Vec<Chunk> {
        let mut section = Vec::new();
        Items::new(self.items())
            .enumerate()
            .map(|(k, item)| {
                section.clear();
                protocol::push_item(&mut section, item.expect("chunks we built are well formed"));
                self.part(self.first_index + k, 1, &section)
            })
            .collect()
    }

    /// Splits after `n` items: `(first n, rest)`.
    pub(crate) fn split(self, n: u32) -> (Option<Chunk>, Option<Chunk>) {
        if n >= self.count {
            return (Some(self), None);
        }
        if n == 0 {
            return (None, Some(self));
        }
        let bytes =
            protocol::items_len(self.items(), n as usize).expect("chunks we built are well formed");
        let (head, tail) = self.items().split_at(bytes);
        (
            Some(self.part(self.first_index, n, head)),
            Some(self.part(self.first_index + n as usize, self.count - n, tail)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(values: &[u64]) -> Chunk {
        let mut frame = RunFrame::new(3);
        for value in values {
            frame.push_with(|buf| protocol::encode(value, buf)).unwrap();
        }
        Chunk {
            map: 1,
            task: 3,
            context: 0,
            first_index: 10,
            count: values.len() as u32,
            frame: frame.finish(),
            attempts: 2,
            returns: 1,
            bulk: Vec::new(),
            context_frame: None,
            timeout: Some(Duration::from_secs(3)),
        }
    }

    fn values(chunk: &Chunk) -> Vec<u64> {
        Items::new(chunk.items())
            .map(|item| protocol::decode(item.unwrap(), &mut [0; 64]).unwrap())
            .collect()
    }

    #[test]
    fn a_chunk_splits_into_its_parts() {
        let (head, rest) = chunk(&[1, 2, 3]).split(1);
        let (head, rest) = (head.unwrap(), rest.unwrap());
        assert_eq!(
            (head.first_index, head.count, values(&head)),
            (10, 1, vec![1])
        );
        assert_eq!(
            (rest.first_index, rest.count, values(&rest)),
            (11, 2, vec![2, 3])
        );
        assert_eq!(rest.attempts, 2);
        assert_eq!(rest.timeout, Some(Duration::from_secs(3)));
        assert!(matches!(chunk(&[1]).split(0), (None, Some(_))));
        assert!(matches!(chunk(&[1]).split(5), (Some(_), None)));
    }

    #[test]
    fn a_chunk_splits_into_singletons() {
        let singles = chunk(&[4, 5, 6]).singletons();
        let got: Vec<(usize, Vec<u64>)> =
            singles.iter().map(|c| (c.first_index, values(c))).collect();
        assert_eq!(got, [(10, vec![4]), (11, vec![5]), (12, vec![6])]);
        assert!(
            singles.iter().all(|c| c.count == 1
                && c.attempts == 2
                && c.timeout == Some(Duration::from_secs(3)))
        );
    }
}
