//! A guest port: a bounded queue of frames the adapter drains into the guest's receive ring.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use super::PortSink;

/// A guest port: a bounded queue of frames waiting for the guest's receive buffers, and a callback
/// that tells the adapter there is something to deliver.
pub struct QueuedPort {
    frames: ArrayQueue<Vec<u8>>,
    wake: Box<dyn Fn() + Send + Sync>,
    dropped: AtomicU64,
}

impl fmt::Debug for QueuedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedPort")
            .field("queued", &self.frames.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl QueuedPort {
    /// A port holding at most `capacity` frames; `wake` runs after each frame is queued.
    pub fn new(capacity: usize, wake: Box<dyn Fn() + Send + Sync>) -> Arc<Self> {
        Arc::new(QueuedPort {
            frames: ArrayQueue::new(capacity.max(1)),
            wake,
            dropped: AtomicU64::new(0),
        })
    }

    /// The oldest queued frame.
    pub fn pop(&self) -> Option<Vec<u8>> {
        self.frames.pop()
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl PortSink for QueuedPort {
    fn deliver(&self, frame: &[u8]) {
        if self.frames.push(frame.to_vec()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        (self.wake)();
    }
}
