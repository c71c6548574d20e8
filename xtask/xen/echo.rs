//! `pvkit-echo`: dom0's Ethernet echo peer for the Xen net scenarios (built by xtask with plain
//! `rustc`, std only, and shipped in dom0's initramfs; xtask's unit tests include this file too).
//!
//! Usage: `pvkit-echo <interface> <stop-file>`. On a raw `AF_PACKET` socket bound to the interface
//! (the domU's vif in dom0) it answers every frame of EtherType 0x88b5 (the workloads' experimental
//! type) with the same frame, MAC addresses swapped, as the QEMU scenarios' host peer does. It stops
//! once `<stop-file>` exists and prints `echoed=<frames> bytes=<bytes> ignored=<frames>`.

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};

/// The workloads' EtherType. This program is built without crates, so it cannot import
/// `ring_protocol::abi::pvkit_echo::ETHERTYPE`; xtask's unit tests check the two are equal.
pub const ETHERTYPE: u16 = 0x88b5;
const AF_PACKET: c_int = 17;
const SOCK_RAW: c_int = 3;
const SOL_SOCKET: c_int = 1;
const SO_RCVTIMEO: c_int = 20;
/// `sll_pkttype` of a frame this host sent (packet sockets see those too).
const PACKET_OUTGOING: u8 = 4;

/// `struct sockaddr_ll` (linux/if_packet.h).
#[repr(C)]
#[derive(Default)]
struct SockaddrLl {
    family: u16,
    /// Network byte order.
    protocol: u16,
    ifindex: c_int,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

/// `struct timeval`.
#[repr(C)]
struct Timeval {
    sec: i64,
    usec: i64,
}

unsafe extern "C" {
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const SockaddrLl, len: u32) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
    fn recvfrom(
        fd: c_int,
        buf: *mut c_void,
        len: usize,
        flags: c_int,
        addr: *mut SockaddrLl,
        alen: *mut u32,
    ) -> isize;
    fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize;
    fn if_nametoindex(name: *const c_char) -> u32;
}

/// Turns a received frame into its echo: swaps destination and source MAC. `false` (frame left
/// alone) for anything that is not a workload frame.
pub fn echo_frame(frame: &mut [u8]) -> bool {
    if frame.len() < 14 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE {
        return false;
    }
    let (dst, rest) = frame.split_at_mut(6);
    dst.swap_with_slice(&mut rest[..6]);
    true
}

#[allow(dead_code)] // Only the dom0 binary runs it; xtask's tests use echo_frame.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, ifname, stop] = &args[..] else {
        eprintln!("usage: pvkit-echo <interface> <stop-file>");
        std::process::exit(2);
    };
    let name = CString::new(ifname.as_str()).expect("interface name without NUL");
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let ifindex = unsafe { if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        eprintln!("pvkit-echo: no interface {ifname}");
        std::process::exit(1);
    }
    let proto = ETHERTYPE.to_be();
    // SAFETY: socket(2) takes plain integers.
    let fd = unsafe { socket(AF_PACKET, SOCK_RAW, c_int::from(proto)) };
    if fd < 0 {
        eprintln!("pvkit-echo: socket: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let addr = SockaddrLl {
        family: AF_PACKET as u16,
        protocol: proto,
        ifindex: ifindex as c_int,
        ..SockaddrLl::default()
    };
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed; `fd` is our socket.
    if unsafe { bind(fd, &addr, std::mem::size_of::<SockaddrLl>() as u32) } != 0 {
        eprintln!("pvkit-echo: bind {ifname}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // Wake up every 100 ms to look for the stop file.
    let tv = Timeval {
        sec: 0,
        usec: 100_000,
    };
    // SAFETY: `tv` is a valid timeval of the size passed.
    unsafe {
        setsockopt(
            fd,
            SOL_SOCKET,
            SO_RCVTIMEO,
            (&tv as *const Timeval).cast(),
            std::mem::size_of::<Timeval>() as u32,
        );
    }
    let (mut echoed, mut bytes, mut ignored) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    while !std::path::Path::new(stop).exists() {
        let mut from = SockaddrLl::default();
        let mut alen = std::mem::size_of::<SockaddrLl>() as u32;
        // SAFETY: `buf` and `from` are valid for writes of the lengths passed.
        let n = unsafe { recvfrom(fd, buf.as_mut_ptr().cast(), buf.len(), 0, &mut from, &mut alen) };
        if n <= 0 {
            continue; // Timeout (or EINTR): look at the stop file again.
        }
        if from.pkttype == PACKET_OUTGOING {
            continue; // Our own echo, seen on the way out.
        }
        let frame = &mut buf[..n as usize];
        if !echo_frame(frame) {
            ignored += 1;
            continue;
        }
        // SAFETY: `frame` is valid for reads of its length; the socket is bound to the interface.
        if unsafe { send(fd, frame.as_ptr().cast(), frame.len(), 0) } == n {
            echoed += 1;
            bytes += n as u64;
        }
    }
    println!("echoed={echoed} bytes={bytes} ignored={ignored}");
}
