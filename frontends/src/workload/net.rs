//! Net echo: frames with checksummed payloads go to a host peer that swaps the MAC addresses and
//! sends them back; every payload is verified. [`ping`] is the other net workload: ARP and ICMP echo
//! against a peer's own IP stack.
//!
//! Frame: destination [`PEER_MAC`], source = the device's MAC, EtherType [`ETHERTYPE`]; payload =
//! sequence number (u32 LE), data length (u16 LE), data, CRC-32 (u32 LE, zlib's) of everything before
//! it in the payload. Short frames are padded to 60 bytes by the sender; the length field says where
//! the data ends.

use alloc::vec::Vec;

use super::{Histogram, Observer, Perf, Report, Rng, crc32};
use crate::net::{ETH_HEADER_LEN, NetDevice};
use crate::wait::{Waiter, wait_for};
use crate::{Error, Result};

pub mod ping;

pub use ring_protocol::abi::pvkit_echo::{ETHERTYPE, PEER_MAC};
/// Longest the workload waits for an echo.
pub const ECHO_TIMEOUT_US: u64 = 5_000_000;
/// Payload bytes that are not data: seq + len + crc.
const OVERHEAD: usize = 4 + 2 + 4;
const MIN_FRAME: usize = 60;

/// Builds the frame with sequence number `seq` and `len` data bytes derived from `seed`.
pub fn build_frame(src: [u8; 6], seq: u32, len: usize, seed: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&PEER_MAC);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ETHERTYPE.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(len as u16).to_le_bytes());
    let mut rng = Rng::new(seed ^ u64::from(seq) << 20);
    out.extend((0..len).map(|_| rng.next_u64() as u8));
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    if out.len() < MIN_FRAME {
        out.resize(MIN_FRAME, 0);
    }
}

/// Checks an echoed frame; returns its sequence number, or `None` for a frame that is not ours
/// (other EtherType).
pub fn check_echo(mac: [u8; 6], frame: &[u8], seed: u64) -> Result<Option<u32>> {
    if frame.len() < ETH_HEADER_LEN || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE {
        return Ok(None);
    }
    let bad = |what, expected: u64, found: u64| Error::Mismatch {
        what,
        index: 0,
        expected,
        found,
    };
    if frame[..6] != mac {
        return Err(bad("echo destination MAC", mac_u64(&mac), mac_u64(&frame[..6])));
    }
    if frame[6..12] != PEER_MAC {
        return Err(bad("echo source MAC", mac_u64(&PEER_MAC), mac_u64(&frame[6..12])));
    }
    let p = &frame[ETH_HEADER_LEN..];
    if p.len() < OVERHEAD {
        return Err(bad("echo payload length", OVERHEAD as u64, p.len() as u64));
    }
    let seq = u32::from_le_bytes(p[0..4].try_into().expect("4 bytes"));
    let len = usize::from(u16::from_le_bytes([p[4], p[5]]));
    if 6 + len + 4 > p.len() {
        return Err(Error::Mismatch {
            what: "echo data length",
            index: seq.into(),
            expected: (p.len() - OVERHEAD) as u64,
            found: len as u64,
        });
    }
    let got = u32::from_le_bytes(p[6 + len..10 + len].try_into().expect("4 bytes"));
    let want = crc32(&p[..6 + len]);
    if got != want {
        return Err(Error::Mismatch {
            what: "echo payload crc32",
            index: seq.into(),
            expected: want.into(),
            found: got.into(),
        });
    }
    // The CRC only proves the frame is intact; the data must also be what we sent.
    let mut rng = Rng::new(seed ^ u64::from(seq) << 20);
    if let Some(i) = p[6..6 + len].iter().position(|&b| b != rng.next_u64() as u8) {
        return Err(Error::Mismatch {
            what: "echo data byte",
            index: seq.into(),
            expected: i as u64,
            found: p[6 + i].into(),
        });
    }
    Ok(Some(seq))
}

fn mac_u64(m: &[u8]) -> u64 {
    m.iter().fold(0, |a, &b| a << 8 | u64::from(b))
}

/// Runs frames `0..count` with at most `window` unanswered; `len_of(seq)` gives each frame's data
/// length; `latency` gets each frame's time from sending to its echo. Returns (frames echoed,
/// frame bytes both ways).
#[allow(clippy::too_many_arguments, reason = "one private helper of the workloads")]
fn run(
    dev: &mut dyn NetDevice,
    waiter: &dyn Waiter,
    count: u32,
    window: u32,
    seed: u64,
    len_of: &dyn Fn(u32) -> usize,
    deadline_us: Option<u64>,
    latency: &mut Histogram,
) -> Result<(u64, u64)> {
    let mac = dev.mac();
    let mut frame = Vec::with_capacity(ETH_HEADER_LEN + dev.mtu());
    let mut rx = alloc::vec![0u8; ETH_HEADER_LEN + dev.mtu() + 4];
    // Sent and not yet echoed (at most `window`): sequence number and when it was sent (ns).
    let mut outstanding: Vec<(u32, u64)> = Vec::with_capacity(window as usize);
    let (mut next, mut echoed, mut bytes) = (0u32, 0u32, 0u64);
    loop {
        let stop = deadline_us.is_some_and(|d| waiter.now_us() >= d);
        let limit = if stop { next } else { count };
        if echoed == limit && (stop || next == count) {
            return Ok((echoed.into(), bytes));
        }
        wait_for(waiter, ECHO_TIMEOUT_US, "an echoed frame", || {
            let mut moved = false;
            while next < limit && next - echoed < window {
                build_frame(mac, next, len_of(next), seed, &mut frame);
                let sent = waiter.now_ns();
                match dev.transmit(&frame) {
                    Ok(()) => {
                        bytes += frame.len() as u64;
                        outstanding.push((next, sent));
                        next += 1;
                        moved = true;
                    }
                    Err(Error::QueueFull { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
            while let Some(n) = dev.receive(&mut rx)? {
                let Some(seq) = check_echo(mac, &rx[..n], seed)? else {
                    continue;
                };
                let Some(at) = outstanding.iter().position(|&(o, _)| o == seq) else {
                    return Err(Error::Mismatch {
                        what: "echo sequence number (unsent or repeated)",
                        index: seq.into(),
                        expected: next.into(),
                        found: seq.into(),
                    });
                };
                let (_, sent) = outstanding.swap_remove(at);
                latency.record(waiter.now_ns().saturating_sub(sent));
                echoed += 1;
                bytes += n as u64;
                moved = true;
            }
            Ok(moved.then_some(()))
        })?;
    }
}

/// Sends `count` frames of data lengths cycling through 0, the largest, and random ones (up to
/// `window` in flight) and verifies every echo.
pub fn echo(
    dev: &mut dyn NetDevice,
    waiter: &dyn Waiter,
    count: u32,
    window: u32,
    seed: u64,
) -> Result<Report> {
    if !dev.link_up() {
        return Err(Error::LinkDown { device: dev.name() });
    }
    let max = dev.mtu() - OVERHEAD;
    let mut latency = Histogram::new();
    let before = dev.counters();
    let t0 = waiter.now_us();
    let lengths = move |seq: u32| match seq % 4 {
        0 => 0,
        1 => max,
        _ => (crate::workload::mix(u64::from(seq)) % (max as u64 + 1)) as usize,
    };
    let (ops, bytes) = run(
        dev,
        waiter,
        count,
        window.max(1),
        seed,
        &lengths,
        None,
        &mut latency,
    )?;
    Ok(Report {
        ops,
        bytes,
        guest_us: waiter.now_us().saturating_sub(t0),
        counters: dev.counters().since(&before),
        latency: latency.summary(),
    })
}

/// The packet-rate phases: pattern name and frame length as handed to the device (header and
/// payload, without the FCS): 64 bytes (40 data bytes), and 1514 (a full 1500-byte payload, 1490
/// data bytes).
pub const RATE_PATTERNS: [(&str, usize); 2] = [("echo64", 64), ("echo1514", 1514)];

/// Packet rate: for each of [`RATE_PATTERNS`] in turn (phase markers 1, 2), frames of that length
/// with `window` in flight for `phase_us`, every echo verified. One [`Perf`] per phase; bytes count
/// frames both ways. A pattern longer than the device's MTU allows is an error.
pub fn rate(
    dev: &mut dyn NetDevice,
    waiter: &dyn Waiter,
    phase_us: u64,
    window: u32,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Vec<Perf>> {
    let mut out = Vec::with_capacity(RATE_PATTERNS.len());
    for (i, &(pattern, frame_len)) in RATE_PATTERNS.iter().enumerate() {
        let data = frame_len - ETH_HEADER_LEN - OVERHEAD;
        if frame_len - ETH_HEADER_LEN > dev.mtu() {
            return Err(Error::BadLength {
                op: "rate-phase frame",
                len: frame_len,
                unit: 1,
                max: ETH_HEADER_LEN + dev.mtu(),
            });
        }
        let mut latency = Histogram::new();
        let before = dev.counters();
        obs.phase(i as u8 + 1);
        let t0 = waiter.now_us();
        let result = run(
            dev,
            waiter,
            u32::MAX,
            window.max(1),
            seed,
            &|_| data,
            Some(t0 + phase_us),
            &mut latency,
        );
        let guest_us = waiter.now_us().saturating_sub(t0);
        obs.phase(0);
        let (ops, bytes) = result?;
        let perf = Perf {
            pattern,
            qd: window.max(1) as usize,
            report: Report {
                ops,
                bytes,
                guest_us,
                counters: dev.counters().since(&before),
                latency: latency.summary(),
            },
        };
        obs.perf(&perf);
        out.push(perf);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::fake::EchoNet;
    use crate::wait::fake::StepClock;

    #[test]
    fn echo_verifies_every_frame() {
        let mut n = EchoNet::default();
        let r = echo(&mut n, &StepClock::new(1), 100, 8, 5).unwrap();
        assert_eq!(r.ops, 100);
        assert_eq!(r.counters.notifications, 100);
        assert!(r.bytes >= 2 * 100 * 60);
        assert_eq!(r.latency.count, 100);
    }

    #[test]
    fn echo_fails_on_corruption_and_loss() {
        let clock = StepClock::new(1);
        let mut bad = EchoNet::default();
        bad.corrupt_at = Some(ETH_HEADER_LEN + 7);
        assert!(matches!(
            echo(&mut bad, &clock, 10, 4, 1),
            Err(Error::Mismatch { .. })
        ));
        let mut lossy = EchoNet::default();
        lossy.drop_every = 5;
        assert!(matches!(
            echo(&mut lossy, &clock, 10, 4, 1),
            Err(Error::Timeout { .. })
        ));
    }

    #[test]
    fn rate_runs_each_frame_size_until_the_deadline_with_markers() {
        let mut n = EchoNet::default();
        let mut rec = crate::workload::Recorder::default();
        let perfs = rate(&mut n, &StepClock::new(3), 3000, 16, 1, &mut rec).unwrap();
        assert_eq!(rec.phases, [1, 0, 2, 0]);
        let names: Vec<_> = perfs.iter().map(|p| p.pattern).collect();
        assert_eq!(names, ["echo64", "echo1514"]);
        for (p, len) in perfs.iter().zip([64, 1514]) {
            assert!(p.report.ops > 10, "{p:?}");
            assert_eq!(
                p.report.bytes,
                p.report.ops * 2 * len,
                "{len}-byte frames both ways"
            );
            assert_eq!(p.report.latency.count, p.report.ops, "every echo timed");
            assert!(p.report.latency.p50_ns > 0);
            assert!(p.report.latency.p50_ns <= p.report.latency.p99_ns);
            assert!(p.report.latency.p99_ns <= p.report.latency.max_ns);
        }
        assert_eq!(rec.perfs, perfs);
    }

    /// A device that sends at most `mtu` payload bytes refuses the full-size phase up front.
    #[test]
    fn rate_refuses_frames_beyond_the_mtu() {
        struct Small(EchoNet);
        impl NetDevice for Small {
            fn name(&self) -> &'static str {
                "small"
            }
            fn mac(&self) -> [u8; 6] {
                self.0.mac()
            }
            fn link_up(&self) -> bool {
                true
            }
            fn mtu(&self) -> usize {
                576
            }
            fn transmit(&mut self, f: &[u8]) -> Result<()> {
                self.0.transmit(f)
            }
            fn receive(&mut self, b: &mut [u8]) -> Result<Option<usize>> {
                self.0.receive(b)
            }
            fn irq_ack(&self) -> Option<crate::wait::SharedIrqAck> {
                None
            }
            fn counters(&self) -> crate::counters::Counters {
                self.0.counters()
            }
        }
        let mut rec = crate::workload::Recorder::default();
        let e = rate(
            &mut Small(EchoNet::default()),
            &StepClock::new(3),
            1000,
            4,
            1,
            &mut rec,
        )
        .unwrap_err();
        assert!(matches!(e, Error::BadLength { len: 1514, .. }), "{e:?}");
        assert_eq!(rec.phases, [1, 0], "the 64-byte phase ran");
    }

    /// An echo device that hands out each echo only on the `delay`-th receive call.
    struct Delayed {
        net: EchoNet,
        delay: u32,
        calls: u32,
    }

    impl NetDevice for Delayed {
        fn name(&self) -> &'static str {
            "delayed"
        }
        fn mac(&self) -> [u8; 6] {
            self.net.mac()
        }
        fn link_up(&self) -> bool {
            true
        }
        fn mtu(&self) -> usize {
            self.net.mtu()
        }
        fn transmit(&mut self, f: &[u8]) -> Result<()> {
            self.net.transmit(f)
        }
        fn receive(&mut self, b: &mut [u8]) -> Result<Option<usize>> {
            self.calls += 1;
            if self.calls < self.delay {
                return Ok(None);
            }
            let got = self.net.receive(b)?;
            if got.is_some() {
                self.calls = 0;
            }
            Ok(got)
        }
        fn irq_ack(&self) -> Option<crate::wait::SharedIrqAck> {
            None
        }
        fn counters(&self) -> crate::counters::Counters {
            self.net.counters()
        }
    }

    /// Echoes that take longer show up in the latency.
    #[test]
    fn latency_follows_the_echo_delay() {
        let clock = StepClock::new(1);
        let fast = echo(&mut EchoNet::default(), &clock, 50, 1, 2).unwrap();
        let mut slow_net = Delayed {
            net: EchoNet::default(),
            delay: 20,
            calls: 0,
        };
        let slow = echo(&mut slow_net, &clock, 50, 1, 2).unwrap();
        assert_eq!((fast.latency.count, slow.latency.count), (50, 50));
        assert!(
            slow.latency.p50_ns >= fast.latency.p50_ns + 10_000,
            "fast {:?} slow {:?}",
            fast.latency,
            slow.latency
        );
    }

    #[test]
    fn frame_round_trips_through_the_checker() {
        let mac = [2, 0, 0, 0, 0, 9];
        let mut f = Vec::new();
        build_frame(mac, 7, 33, 4, &mut f);
        let (a, b) = f.split_at_mut(6);
        a.swap_with_slice(&mut b[..6]);
        assert_eq!(check_echo(mac, &f, 4), Ok(Some(7)));
        assert!(check_echo(mac, &f, 5).is_err(), "other seed, other data");
        f[12] = 0x08;
        assert_eq!(check_echo(mac, &f, 4), Ok(None), "not our EtherType");
    }
}
