//! Network devices: Ethernet frames in and out.

use crate::Result;
use crate::counters::Counters;
use crate::wait::SharedIrqAck;

/// Bytes in an Ethernet header (destination, source, type).
pub const ETH_HEADER_LEN: usize = 14;

/// An Ethernet device. Frames are whole Ethernet frames without the FCS.
pub trait NetDevice {
    /// Device kind as named on the kernel command line (`virtio-net`, `e1000`, ...).
    fn name(&self) -> &'static str;

    /// The device's MAC address.
    fn mac(&self) -> [u8; 6];

    /// Whether the link is up (devices that cannot tell say `true`).
    fn link_up(&self) -> bool;

    /// Largest payload after the Ethernet header (1500 unless the device says otherwise).
    fn mtu(&self) -> usize;

    /// Queues one frame for sending (it is copied or its transmission finished before this returns).
    /// [`crate::Error::QueueFull`] means: retry after [`receive`](Self::receive) or a moment; a frame
    /// longer than `ETH_HEADER_LEN + mtu()` is [`crate::Error::BadLength`].
    fn transmit(&mut self, frame: &[u8]) -> Result<()>;

    /// Takes one received frame into `buf`, returning its length, or `None` if nothing arrived. A
    /// frame longer than `buf` is [`crate::Error::BadLength`] (and dropped).
    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>>;

    /// The interrupt hook, if the device can signal by interrupt.
    fn irq_ack(&self) -> Option<SharedIrqAck>;

    /// The driver's own counts.
    fn counters(&self) -> Counters;
}

/// A loopback device for host tests: what is transmitted is received back with source and
/// destination MAC swapped, like the host echo peer does.
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    use alloc::collections::VecDeque;
    use alloc::vec::Vec;

    use super::*;
    use crate::Error;

    /// Echoing loopback device.
    #[derive(Debug, Default)]
    pub struct EchoNet {
        queue: VecDeque<Vec<u8>>,
        /// Flip this byte index of every echoed frame (to test that corruption is caught).
        pub corrupt_at: Option<usize>,
        /// Drop every n-th frame (1-based count); 0 = none.
        pub drop_every: usize,
        sent: usize,
        counters: Counters,
    }

    impl NetDevice for EchoNet {
        fn name(&self) -> &'static str {
            "echo"
        }

        fn mac(&self) -> [u8; 6] {
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        }

        fn link_up(&self) -> bool {
            true
        }

        fn mtu(&self) -> usize {
            1500
        }

        fn transmit(&mut self, frame: &[u8]) -> Result<()> {
            let max = ETH_HEADER_LEN + self.mtu();
            if frame.len() < ETH_HEADER_LEN || frame.len() > max {
                return Err(Error::BadLength {
                    op: "transmit",
                    len: frame.len(),
                    unit: 1,
                    max,
                });
            }
            self.counters.notifications += 1;
            self.sent += 1;
            if self.drop_every != 0 && self.sent.is_multiple_of(self.drop_every) {
                return Ok(());
            }
            let mut f = frame.to_vec();
            let (dst, src) = f.split_at_mut(6);
            dst.swap_with_slice(&mut src[..6]);
            if let Some(i) = self.corrupt_at.filter(|&i| i < f.len()) {
                f[i] ^= 0xff;
            }
            self.queue.push_back(f);
            Ok(())
        }

        fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
            let Some(f) = self.queue.pop_front() else {
                return Ok(None);
            };
            if f.len() > buf.len() {
                return Err(Error::BadLength {
                    op: "receive",
                    len: f.len(),
                    unit: 1,
                    max: buf.len(),
                });
            }
            buf[..f.len()].copy_from_slice(&f);
            Ok(Some(f.len()))
        }

        fn irq_ack(&self) -> Option<SharedIrqAck> {
            None
        }

        fn counters(&self) -> Counters {
            self.counters
        }
    }
}
