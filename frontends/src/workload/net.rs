//! Net echo: frames with checksummed payloads go to a host peer that swaps the MAC addresses and
//! sends them back; every payload is verified.
//!
//! Frame: destination [`PEER_MAC`], source = the device's MAC, EtherType [`ETHERTYPE`]; payload =
//! sequence number (u32 LE), data length (u16 LE), data, CRC-32 (u32 LE, zlib's) of everything before
//! it in the payload. Short frames are padded to 60 bytes by the sender; the length field says where
//! the data ends.

use alloc::vec::Vec;

use super::{Observer, Perf, Report, Rng, crc32};
use crate::net::{ETH_HEADER_LEN, NetDevice};
use crate::wait::{Waiter, wait_for};
use crate::{Error, Result};

/// Local experimental EtherType.
pub const ETHERTYPE: u16 = 0x88b5;
/// Where frames are sent (a locally administered address; the peer answers whatever it is).
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
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
/// length. Returns (frames echoed, payload bytes both ways).
fn run(
    dev: &mut dyn NetDevice,
    waiter: &dyn Waiter,
    count: u32,
    window: u32,
    seed: u64,
    len_of: &dyn Fn(u32) -> usize,
    deadline_us: Option<u64>,
) -> Result<(u64, u64)> {
    let mac = dev.mac();
    let mut frame = Vec::new();
    let mut rx = alloc::vec![0u8; ETH_HEADER_LEN + dev.mtu() + 4];
    // Sent and not yet echoed (at most `window`).
    let mut outstanding: Vec<u32> = Vec::new();
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
                match dev.transmit(&frame) {
                    Ok(()) => {
                        bytes += frame.len() as u64;
                        outstanding.push(next);
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
                let Some(at) = outstanding.iter().position(|&o| o == seq) else {
                    return Err(Error::Mismatch {
                        what: "echo sequence number (unsent or repeated)",
                        index: seq.into(),
                        expected: next.into(),
                        found: seq.into(),
                    });
                };
                outstanding.swap_remove(at);
                echoed += 1;
                bytes += n as u64;
                moved = true;
            }
            Ok(moved.then_some(()))
        })?;
    }
}

/// Sends `count` frames of data lengths cycling through 0..=max (one at a time in flight... up to
/// `window`) and verifies every echo.
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
    let before = dev.counters();
    let t0 = waiter.now_us();
    let lengths = move |seq: u32| match seq % 4 {
        0 => 0,
        1 => max,
        _ => (crate::workload::mix(u64::from(seq)) % (max as u64 + 1)) as usize,
    };
    let (ops, bytes) = run(dev, waiter, count, window.max(1), seed, &lengths, None)?;
    Ok(Report {
        ops,
        bytes,
        guest_us: waiter.now_us().saturating_sub(t0),
        counters: dev.counters().since(&before),
    })
}

/// Packet rate: minimum-size frames, `window` in flight, for `phase_us`; marker 1 around it.
pub fn rate(
    dev: &mut dyn NetDevice,
    waiter: &dyn Waiter,
    phase_us: u64,
    window: u32,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Perf> {
    let before = dev.counters();
    obs.phase(1);
    let t0 = waiter.now_us();
    let result = run(
        dev,
        waiter,
        u32::MAX,
        window.max(1),
        seed,
        &|_| 0,
        Some(t0 + phase_us),
    );
    let guest_us = waiter.now_us().saturating_sub(t0);
    obs.phase(0);
    let (ops, bytes) = result?;
    let perf = Perf {
        pattern: "echo64",
        qd: window.max(1) as usize,
        report: Report {
            ops,
            bytes,
            guest_us,
            counters: dev.counters().since(&before),
        },
    };
    obs.perf(&perf);
    Ok(perf)
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
    fn rate_runs_until_the_deadline_with_markers() {
        let mut n = EchoNet::default();
        let mut rec = crate::workload::Recorder::default();
        let p = rate(&mut n, &StepClock::new(3), 3000, 16, 1, &mut rec).unwrap();
        assert_eq!(rec.phases, [1, 0]);
        assert!(p.report.ops > 10, "{p:?}");
        assert_eq!(p.report.bytes, p.report.ops * 2 * 60);
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
