//! The console echo peer: a socket chardev (virtio-console port, COM2) connects to it. Each byte
//! is compared with the guest's console-echo stream (`pvkit_frontends::workload::console`: byte i
//! is the low byte of the i-th value of the workload's generator seeded with its seed), counted
//! and sent back unchanged.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use anyhow::Result;
use pvkit_frontends::workload::Rng;

use super::{Peer, is_timeout};

/// What the peer saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    pub connected: bool,
    /// Bytes received (and echoed, unless `problem` says otherwise).
    pub received: u64,
    pub echoed: u64,
    /// Bytes equal to the expected stream, counted up to the first difference.
    pub verified: u64,
    /// The first problem.
    pub problem: Option<String>,
}

/// The bytes the workload sends, in order.
#[derive(Debug)]
pub struct Expected(Rng);

impl Expected {
    pub fn new(seed: u64) -> Self {
        Self(Rng::new(seed))
    }

    pub fn next_byte(&mut self) -> u8 {
        self.0.next_u64() as u8
    }
}

/// Starts the peer; it gives up at `deadline` and stops after `max_bytes`.
pub fn start(seed: u64, max_bytes: u64, deadline: Instant) -> Result<Peer<ConsoleStats>> {
    Peer::spawn(
        "console-echo",
        deadline,
        move |s, live| serve(s, live, seed, max_bytes),
        ConsoleStats::default,
    )
}

fn serve(mut s: TcpStream, live: &dyn Fn() -> bool, seed: u64, max_bytes: u64) -> ConsoleStats {
    let mut st = ConsoleStats {
        connected: true,
        ..ConsoleStats::default()
    };
    let mut want = Expected::new(seed);
    let mut buf = vec![0u8; 16 * 1024];
    while live() && st.received < max_bytes {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                st.problem.get_or_insert(format!("reading from QEMU: {e}"));
                break;
            }
        };
        for &b in &buf[..n] {
            if st.problem.is_none() {
                let w = want.next_byte();
                if b == w {
                    st.verified += 1;
                } else {
                    st.problem = Some(format!(
                        "byte {} is {b:#04x}, the workload's stream has {w:#04x}",
                        st.received
                    ));
                }
            }
            st.received += 1;
        }
        if let Err(e) = s.write_all(&buf[..n]) {
            st.problem.get_or_insert(format!("writing to QEMU: {e}"));
            break;
        }
        st.echoed += n as u64;
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn echoes_and_checks_the_stream() {
        let peer = start(5, 1 << 20, Instant::now() + Duration::from_secs(20)).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", peer.port)).unwrap();
        let mut e = Expected::new(5);
        let mut data: Vec<u8> = (0..3000).map(|_| e.next_byte()).collect();
        data[2500] ^= 0x40;
        c.write_all(&data).unwrap();
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, data, "echoed unchanged, even the bad byte");
        drop(c);
        let st = peer.finish();
        assert_eq!((st.received, st.echoed, st.verified), (3000, 3000, 2500));
        assert!(st.problem.unwrap().starts_with("byte 2500 "));
    }

    #[test]
    fn nobody_connecting_ends_at_the_deadline() {
        let t0 = Instant::now();
        let peer = start(1, 10, t0 + Duration::from_millis(200)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let st = peer.finish();
        assert!(!st.connected);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
