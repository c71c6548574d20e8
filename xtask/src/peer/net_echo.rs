//! The network echo peer: QEMU's `-netdev stream` connects to it (each Ethernet frame travels as a
//! 4-byte big-endian length and the frame). Every frame of the guest's net-echo workload is
//! checked (format in `pvkit_frontends::workload::net`: EtherType 0x88b5 to the peer's MAC; payload
//! sequence u32 LE, data length u16 LE, data, zlib CRC-32 u32 LE; padded with zeros to 60 bytes),
//! counted and sent back with the MAC addresses swapped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use anyhow::Result;
use pvkit_frontends::net::ETH_HEADER_LEN;
use pvkit_frontends::workload::net::{ETHERTYPE, PEER_MAC};
use pvkit_frontends::workload::{Rng, crc32};

use super::{Peer, is_timeout};

/// Frames shorter than this are padded by the sender.
const MIN_FRAME: usize = 60;
/// Payload bytes around the data: sequence, length, CRC.
const OVERHEAD: usize = 4 + 2 + 4;
/// Larger frames are a framing error (the guest's MTU is 1500).
const MAX_FRAME: usize = 65_535;
/// Problems kept verbatim (the rest are only counted).
const MAX_PROBLEMS: usize = 8;

/// What the peer saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// QEMU connected.
    pub connected: bool,
    /// Frames received.
    pub received: u64,
    /// Frames of the workload that passed every check.
    pub verified: u64,
    /// Frames sent back.
    pub echoed: u64,
    /// Frame bytes received.
    pub bytes: u64,
    /// Frames with another EtherType (not echoed).
    pub foreign: u64,
    /// Sequence runs seen (the echo phase and the packet-rate phase each start at 0).
    pub runs: u64,
    /// Data bytes checked against the workload's generator.
    pub data_checked: u64,
    /// What was wrong (first few), and how many problems in all.
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl NetStats {
    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }
}

/// A checked workload frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub seq: u32,
    pub data_len: usize,
}

/// Checks one frame the guest sent. `Ok(None)` for a frame that is not the workload's (another
/// EtherType). `seed` is the workload's; data of zero-length frames needs none.
pub fn verify_frame(frame: &[u8], seed: u64) -> Result<Option<Frame>, String> {
    if frame.len() < ETH_HEADER_LEN {
        return Err(format!("runt frame of {} bytes", frame.len()));
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE {
        return Ok(None);
    }
    if frame[..6] != PEER_MAC {
        return Err(format!(
            "destination MAC {:02x?}, expected {PEER_MAC:02x?}",
            &frame[..6]
        ));
    }
    let p = &frame[ETH_HEADER_LEN..];
    if p.len() < OVERHEAD {
        return Err(format!("payload of {} bytes, less than {OVERHEAD}", p.len()));
    }
    let seq = u32::from_le_bytes(p[0..4].try_into().expect("4 bytes"));
    let len = usize::from(u16::from_le_bytes([p[4], p[5]]));
    let used = ETH_HEADER_LEN + OVERHEAD + len;
    if used.max(MIN_FRAME) != frame.len() {
        return Err(format!(
            "frame {seq}: {} bytes for {len} data bytes, expected {}",
            frame.len(),
            used.max(MIN_FRAME)
        ));
    }
    let crc = u32::from_le_bytes(p[6 + len..10 + len].try_into().expect("4 bytes"));
    let want = crc32(&p[..6 + len]);
    if crc != want {
        return Err(format!(
            "frame {seq}: payload CRC-32 {crc:#010x}, computed {want:#010x}"
        ));
    }
    if let Some(i) = frame[used..].iter().position(|&b| b != 0) {
        return Err(format!("frame {seq}: padding byte {} is not zero", used + i));
    }
    // The CRC proves the frame intact; the data must also be what the workload generates.
    let mut rng = Rng::new(seed ^ (u64::from(seq) << 20));
    if let Some(i) = p[6..6 + len].iter().position(|&b| b != rng.next_u64() as u8) {
        return Err(format!(
            "frame {seq}: data byte {i} is {:#04x}, not the generator's",
            p[6 + i]
        ));
    }
    Ok(Some(Frame { seq, data_len: len }))
}

/// The frame sent back: destination and source swapped.
/// `02:00:00:00:00:01` for a MAC.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn echo_of(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    if out.len() >= 12 {
        let (dst, rest) = out.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
    }
    out
}

/// Tracks sequence numbers: each run counts up from 0 by one.
#[derive(Debug, Default)]
struct Sequence {
    next: Option<u32>,
}

impl Sequence {
    fn see(&mut self, seq: u32, stats: &mut NetStats) {
        match self.next {
            _ if seq == 0 => stats.runs += 1,
            Some(n) if n == seq => {}
            n => stats.problem(format!(
                "frame {seq} out of order (expected {})",
                n.map_or("a new run at 0".to_owned(), |n| n.to_string())
            )),
        }
        self.next = Some(seq.wrapping_add(1));
    }
}

/// Starts the peer; it gives up at `deadline` and stops after `max_frames` frames.
pub fn start(seed: u64, max_frames: u64, deadline: Instant) -> Result<Peer<NetStats>> {
    Peer::spawn(
        "net-echo",
        deadline,
        move |s, live| serve(s, live, seed, max_frames),
        NetStats::default,
    )
}

fn serve(mut s: TcpStream, live: &dyn Fn() -> bool, seed: u64, max_frames: u64) -> NetStats {
    let mut st = NetStats {
        connected: true,
        ..NetStats::default()
    };
    let mut seq = Sequence::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while live() && st.received < max_frames {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                st.problem(format!("reading from QEMU: {e}"));
                break;
            }
        }
        let mut at = 0;
        while buf.len() - at >= 4 {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            if len > MAX_FRAME {
                st.problem(format!("stream framing: length {len}"));
                return st;
            }
            if buf.len() - at - 4 < len {
                break;
            }
            let frame = &buf[at + 4..at + 4 + len];
            at += 4 + len;
            st.received += 1;
            st.bytes += len as u64;
            match verify_frame(frame, seed) {
                Ok(None) => {
                    st.foreign += 1;
                    continue;
                }
                Ok(Some(f)) => {
                    seq.see(f.seq, &mut st);
                    st.verified += 1;
                    st.data_checked += f.data_len as u64;
                }
                Err(p) => st.problem(p),
            }
            let echo = echo_of(frame);
            let mut out = Vec::with_capacity(4 + echo.len());
            out.extend_from_slice(&(echo.len() as u32).to_be_bytes());
            out.extend_from_slice(&echo);
            if let Err(e) = s.write_all(&out) {
                st.problem(format!("writing to QEMU: {e}"));
                return st;
            }
            st.echoed += 1;
        }
        buf.drain(..at);
    }
    if !buf.is_empty() {
        st.problem(format!("{} bytes of a partial frame left at the end", buf.len()));
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_frontends::workload::net::build_frame;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn accepts_the_workloads_frames_and_rejects_damage() {
        let mut f = Vec::new();
        for (seq, len) in [(0, 0), (1, 1490), (2, 7), (3, 46)] {
            build_frame(MAC, seq, len, 9, &mut f);
            assert_eq!(verify_frame(&f, 9), Ok(Some(Frame { seq, data_len: len })));
        }
        build_frame(MAC, 5, 100, 9, &mut f);
        assert!(
            verify_frame(&f, 8).unwrap_err().contains("data byte"),
            "other seed"
        );
        let mut bad = f.clone();
        bad[40] ^= 1;
        assert!(verify_frame(&bad, 9).unwrap_err().contains("CRC"));
        let mut bad = f.clone();
        bad[0] = 0xff;
        assert!(verify_frame(&bad, 9).unwrap_err().contains("destination"));
        assert!(verify_frame(&f[..f.len() - 1], 9).is_err(), "truncated");
        build_frame(MAC, 6, 0, 9, &mut f);
        let mut bad = f.clone();
        bad[59] = 1;
        assert!(verify_frame(&bad, 9).unwrap_err().contains("padding"));
        let mut other = f.clone();
        other[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(verify_frame(&other, 9), Ok(None));
        assert!(verify_frame(&f[..10], 9).is_err());
    }

    #[test]
    fn echo_swaps_macs_and_keeps_the_rest() {
        let mut f = Vec::new();
        build_frame(MAC, 1, 20, 3, &mut f);
        let e = echo_of(&f);
        assert_eq!(&e[..6], &MAC);
        assert_eq!(&e[6..12], &PEER_MAC);
        assert_eq!(&e[12..], &f[12..]);
    }

    #[test]
    fn sequence_runs_and_gaps() {
        let mut st = NetStats::default();
        let mut s = Sequence::default();
        for q in [0, 1, 2, 0, 1, 3] {
            s.see(q, &mut st);
        }
        assert_eq!(st.runs, 2);
        assert_eq!(st.problem_count, 1);
        assert!(st.problems[0].contains("frame 3 out of order (expected 2)"));
    }

    #[test]
    fn peer_echoes_over_the_stream_protocol() {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        let peer = start(4, 100, deadline).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", peer.port)).unwrap();
        let mut f = Vec::new();
        for seq in 0..3 {
            build_frame(MAC, seq, 300 * seq as usize, 4, &mut f);
            // Split the record across writes: the peer must reassemble it.
            let mut rec = (f.len() as u32).to_be_bytes().to_vec();
            rec.extend_from_slice(&f);
            c.write_all(&rec[..3]).unwrap();
            c.flush().unwrap();
            c.write_all(&rec[3..]).unwrap();
            let mut len = [0u8; 4];
            c.read_exact(&mut len).unwrap();
            let mut back = vec![0u8; u32::from_be_bytes(len) as usize];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, echo_of(&f));
        }
        drop(c);
        let st = peer.finish();
        assert_eq!((st.received, st.verified, st.echoed, st.runs), (3, 3, 3, 1));
        assert_eq!(st.data_checked, 900);
        assert!(st.problems.is_empty(), "{:?}", st.problems);
    }
}
