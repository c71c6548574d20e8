//! Console devices: a byte stream each way.

use crate::Result;
use crate::counters::Counters;
use crate::wait::SharedIrqAck;

/// A byte-stream console (virtio-console port, 16550 UART, Xen console ring).
pub trait ConsoleDevice {
    /// Device kind as named on the kernel command line (`virtio-console`, `uart`, ...).
    fn name(&self) -> &'static str;

    /// Queues as many bytes of `data` as fit without waiting; returns how many (0 if none fit now).
    fn write(&mut self, data: &[u8]) -> Result<usize>;

    /// Takes received bytes into `buf` without waiting; returns how many (0 if none arrived).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// The interrupt hook, if the device can signal by interrupt.
    fn irq_ack(&self) -> Option<SharedIrqAck>;

    /// The driver's own counts.
    fn counters(&self) -> Counters;
}

/// A loopback console for host tests: written bytes become readable, a few at a time.
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    use alloc::collections::VecDeque;

    use super::*;

    /// Loopback console with a bounded buffer.
    #[derive(Debug)]
    pub struct LoopConsole {
        buf: VecDeque<u8>,
        /// Bytes accepted per write call at most.
        pub chunk: usize,
        /// Capacity of the loop.
        pub capacity: usize,
        counters: Counters,
    }

    impl LoopConsole {
        /// A loop holding `capacity` bytes, accepting `chunk` bytes per write.
        pub fn new(capacity: usize, chunk: usize) -> Self {
            Self {
                buf: VecDeque::new(),
                chunk,
                capacity,
                counters: Counters::default(),
            }
        }
    }

    impl ConsoleDevice for LoopConsole {
        fn name(&self) -> &'static str {
            "loop"
        }

        fn write(&mut self, data: &[u8]) -> Result<usize> {
            let n = data.len().min(self.chunk).min(self.capacity - self.buf.len());
            self.buf.extend(&data[..n]);
            if n > 0 {
                self.counters.notifications += 1;
            }
            Ok(n)
        }

        fn read(&mut self, out: &mut [u8]) -> Result<usize> {
            let n = out.len().min(self.buf.len());
            for (o, b) in out.iter_mut().zip(self.buf.drain(..n)) {
                *o = b;
            }
            Ok(n)
        }

        fn irq_ack(&self) -> Option<SharedIrqAck> {
            None
        }

        fn counters(&self) -> Counters {
            self.counters
        }
    }
}
