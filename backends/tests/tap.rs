//! The switch's tap port against the host's own network stack: the kernel (through a real tap
//! interface) sends UDP datagrams to the switch's echo peer (on a port bound to its MAC) and gets
//! them back; the tap's learning port learns the host's address and cannot take the peer's.
//!
//! Needs root (creating an interface) and `/dev/net/tun`, as pvkit's test machines have; without
//! them the test fails saying so.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pvkit_backends::net::{EchoPeer, Switch};
use pvkit_backends::tap::TapPort;

fn ip(args: &str) {
    let st = Command::new("ip")
        .args(args.split(' '))
        .status()
        .unwrap_or_else(|e| panic!("running `ip {args}` (iproute2): {e}"));
    assert!(st.success(), "`ip {args}` failed: {st}");
}

/// Removes the interface even when the test fails.
struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).status();
    }
}

#[test]
fn host_kernel_reaches_the_echo_peer_through_the_tap_port() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && std::path::Path::new("/dev/net/tun").exists(),
        "this test creates a tap interface: it needs root and /dev/net/tun"
    );
    let name = "pvkit-tap-t0";
    let _cleanup = Cleanup(name);
    let switch = Switch::new();
    let peer_mac = [2, 0x70, 0x76, 0x6b, 0x69, 0x74];
    let echo = EchoPeer::try_attach(&switch, peer_mac, [10, 77, 0, 1]).unwrap();
    let tap = TapPort::attach(&switch, name).expect("creating the tap interface");
    ip(&format!("addr add 10.77.0.2/24 dev {name}"));
    ip(&format!("link set {name} up"));
    let sock = UdpSocket::bind("10.77.0.2:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..5u32 {
        let msg = format!("pvkit-tap-{i}-{}", "x".repeat(i as usize * 100));
        sock.send_to(msg.as_bytes(), "10.77.0.1:7").unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = sock.recv_from(&mut buf).expect("the echo peer's answer");
        assert_eq!(from.to_string(), "10.77.0.1:7");
        assert_eq!(&buf[..n], msg.as_bytes(), "datagram {i} came back changed");
    }
    assert_eq!(echo.stats().udp.load(Ordering::Relaxed), 5);
    assert!(
        echo.stats().arp.load(Ordering::Relaxed) >= 1,
        "the kernel resolved the peer by ARP"
    );
    assert!(tap.stats().from_host.load(Ordering::Relaxed) >= 6);
    // The kernel may hand the last answer to our socket before the writer thread counts it.
    let counted = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        tap.stats().to_host.load(Ordering::Relaxed) >= 6
    });
    assert!(counted, "{:?}", tap.stats());
    assert_eq!(tap.stats().write_errors.load(Ordering::Relaxed), 0);
    // The host's address was learned on the tap's port; nothing it sent was refused; the peer's
    // address stays bound to the peer, and a frame from the tap claiming it is refused.
    let port = switch.port_counts(tap.port()).unwrap();
    assert!(port.learned >= 1 && port.spoofed == 0, "{port:?}");
    assert_eq!(switch.lookup(&peer_mac), Some(echo.port()));
    let mut forged = vec![0xff; 6];
    forged.extend_from_slice(&peer_mac);
    forged.extend_from_slice(&[0x08, 0x06]);
    forged.extend_from_slice(&[0; 28]);
    assert!(switch.send(tap.port(), &forged).is_err());
    assert_eq!(switch.port_counts(tap.port()).unwrap().spoofed, 1);
}
