//! The vhost-user message relay between the frontend (QEMU) and the library: a gatekeeper for a
//! frontend that may be hostile, and the place that absorbs one QEMU ordering quirk.
//!
//! **Gatekeeper.** Every message, descriptor and memory region a frontend sends is peer input. The
//! relay reads each message whole (header, payload, and the descriptors that came with it, at most
//! [`MAX_FDS`]), checks it against what the protocol and these devices allow ([`Policy`]), and only
//! then forwards it to the `vhost`/`vhost-user-backend` library. A message it refuses ends the
//! connection (its descriptors are closed); the daemon then serves the next one. Checked here
//! because the library (vhost 0.18, vhost-user-backend 0.24, vm-memory 0.18) accepts them:
//!
//! - more descriptors per message than the protocol allows (8: one per memory region of
//!   SET_MEM_TABLE, one for the others); the library takes up to 32;
//! - SET_MEM_TABLE with more than 8 regions (the library takes 32), overlapping regions (in guest
//!   or VMM addresses), a region past the end of its file (vm-memory maps it; the first access
//!   would kill the daemon with SIGBUS; its `MappingPastEof` error is defined but never raised), a
//!   file that could shrink later (no `F_SEAL_SHRINK`, unless allowed), more memory than
//!   [`Policy::max_memory`];
//! - SET_PROTOCOL_FEATURES acking features the backend did not offer: the library records the
//!   frontend's value as is and then serves SET_LOG_BASE (an mmap of any size the frontend names),
//!   the INFLIGHT messages, ADD_MEM_REG (no slot limit) on that word alone;
//! - requests these devices do not implement (GPU_SET_SOCKET and SET_DEVICE_STATE_FD are served by
//!   the library without any feature check);
//! - a queue size that is not a power of two (the library passes it to virtio-queue, which logs and
//!   keeps the old size, so device and driver disagree about the ring), a 32-bit ring base (the
//!   library truncates it to 16 bits), ring addresses outside the memory table or misaligned
//!   (virtio-queue logs and keeps the old address), a ring index beyond the device's queues;
//! - kick, call and error descriptors that are not eventfds: a pipe as the call descriptor would
//!   block the worker thread in `write` once full, and with it the daemon's shutdown. They are
//!   also switched to non-blocking (QEMU's already are), so a call eventfd whose counter the VMM
//!   filled cannot block the worker either.
//!
//! Upstream: each of these is worth a check in rust-vmm's `vhost` (`set_mem_table`, the protocol
//! feature mask, per-request fd counts) or `vm-memory` (`MappingPastEof`).
//!
//! **Quirk.** QEMU (checked with 10.0) sends `SET_VRING_ENABLE` for a vhost-user netdev while
//! attaching it to the virtio-net device, before the first `SET_FEATURES`. The `vhost` crate (0.18)
//! and `vhost-user-backend` (0.24) refuse `SET_VRING_ENABLE` until `VHOST_USER_F_PROTOCOL_FEATURES`
//! has been acked through `SET_FEATURES`, and end the connection; without that feature QEMU refuses
//! to start the device at all. The relay answers such early `SET_VRING_ENABLE`s itself (success, if
//! a reply was asked for), remembers the last state asked for each ring, and replays those right
//! after forwarding `SET_FEATURES` (without asking for replies): QEMU does not enable the rings again
//! when it starts the device.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    FrontendReq, MAX_MSG_SIZE, VhostUserMemory, VhostUserMemoryRegion, VhostUserU64, VhostUserVringAddr,
    VhostUserVringState,
};
use vm_memory::ByteValued;

const HDR_LEN: usize = 12;
const FLAG_VERSION_MASK: u32 = 0x3;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload the protocol carries (the library's `MAX_MSG_SIZE`, 4 KiB: SET_MEM_TABLE with 8
/// regions is 8 + 8 * 32 bytes, config space messages up to 256 bytes).
const MAX_PAYLOAD: usize = MAX_MSG_SIZE;
/// Most descriptors one message may carry: SET_MEM_TABLE's regions, one descriptor each, at most 8
/// (`VHOST_MEMORY_BASELINE_NREGIONS` in the vhost-user specification); every other message carries
/// at most one. rust-vmm's `vhost` allows 32 (`MAX_ATTACHED_FD_ENTRIES`).
pub const MAX_FDS: usize = 8;
/// Most regions of one SET_MEM_TABLE.
pub const MAX_REGIONS: usize = MAX_FDS;
/// Default of [`Policy::max_memory`]: 1 TiB.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 40;
/// Bit 8 of the SET_VRING_KICK/CALL/ERR payload: no descriptor (polling).
const VRING_NOFD: u64 = 0x100;
/// Control buffer for [`MAX_FDS`] descriptors, on receive and on send: the kernel truncates
/// anything beyond on receive (closing those descriptors) and reports it (`MSG_CTRUNC`).
// SAFETY: CMSG_SPACE is a pure computation on its argument.
const CMSG_BYTES: usize = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
/// The control buffer in u64 words (cmsghdr needs 8-byte alignment).
const CMSG_WORDS: usize = CMSG_BYTES.div_ceil(8);
const _: () = assert!(CMSG_WORDS * 8 >= CMSG_BYTES && CMSG_BYTES < 128);

/// What the relay lets a frontend do, from the backend it fronts.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Protocol features the backend offers (REPLY_ACK included): SET_PROTOCOL_FEATURES may ack
    /// nothing else.
    pub protocol_features: u64,
    /// Queues the device has: every ring index must be below.
    pub queues: u32,
    /// Largest queue size the device takes.
    pub max_queue_size: u32,
    /// Accept memory whose file can shrink (no `F_SEAL_SHRINK`): the VMM could kill the daemon with
    /// SIGBUS by shrinking it.
    pub allow_unsealed_memory: bool,
    /// Most bytes of guest memory one SET_MEM_TABLE may map.
    pub max_memory: u64,
}

/// Why the relay refused a frontend message.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// More descriptors than one message may carry.
    #[error("{fds} file descriptors with one message (at most {MAX_FDS})")]
    TooManyFds {
        /// Descriptors received so far (the kernel drops and closes any beyond the buffer).
        fds: usize,
    },
    /// The kernel truncated the descriptors (more than the control buffer holds).
    #[error("more file descriptors with one message than {MAX_FDS} (control data truncated)")]
    FdsTruncated,
    /// A payload larger than the protocol allows.
    #[error("message {req} claims {size} payload bytes (at most {MAX_PAYLOAD})")]
    Oversized {
        /// The request code.
        req: u32,
        /// The size claimed.
        size: usize,
    },
    /// Header flags that are not a version 1 request.
    #[error("message {req} with header flags {flags:#x}")]
    Flags {
        /// The request code.
        req: u32,
        /// The flags.
        flags: u32,
    },
    /// A request these devices do not serve.
    #[error("request {req} not served by this daemon")]
    Request {
        /// The request code.
        req: u32,
    },
    /// A payload of the wrong size.
    #[error("{req:?} with a payload of {size} bytes, {expected} expected")]
    PayloadSize {
        /// The request.
        req: FrontendReq,
        /// Its payload size.
        size: usize,
        /// What it must be.
        expected: usize,
    },
    /// The wrong number of descriptors.
    #[error("{req:?} with {fds} file descriptors, {expected} expected")]
    FdCount {
        /// The request.
        req: FrontendReq,
        /// Descriptors that came.
        fds: usize,
        /// What it takes.
        expected: usize,
    },
    /// Protocol features acked that the backend did not offer.
    #[error("protocol features {acked:#x} ack bits not offered ({offered:#x})")]
    ProtocolFeatures {
        /// The value acked.
        acked: u64,
        /// What the backend offered.
        offered: u64,
    },
    /// A ring index the device does not have.
    #[error("{req:?} for ring {index}; the device has {queues}")]
    RingIndex {
        /// The request.
        req: FrontendReq,
        /// The index.
        index: u64,
        /// The device's queues.
        queues: u32,
    },
    /// A value out of range for its request.
    #[error("{req:?} for ring {index}: {what} {value:#x}")]
    Value {
        /// The request.
        req: FrontendReq,
        /// The ring.
        index: u32,
        /// What is wrong.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A ring outside guest memory or misaligned.
    #[error("ring {index}: {what} at {addr:#x} ({len} bytes) {why}")]
    RingAddress {
        /// The ring.
        index: u32,
        /// Descriptor table, available ring or used ring.
        what: &'static str,
        /// Its address in the VMM's address space.
        addr: u64,
        /// Its length for the ring's size.
        len: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A SET_MEM_TABLE region the daemon will not map.
    #[error("memory region {index}: {why}")]
    Region {
        /// Its index in the message.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A kick, call or error descriptor that is not an eventfd.
    #[error("{req:?}: the descriptor is not an eventfd")]
    NotEventfd {
        /// The request.
        req: FrontendReq,
    },
}

/// How a relay ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The frontend sent a message the relay refused; the connection was closed.
    #[error("refused: {0}")]
    Refused(#[from] Refused),
}

/// Receives exactly `buf.len()` bytes; file descriptors that come with them are appended to `fds`,
/// at most [`MAX_FDS`] in all. `Ok(false)` at a clean end of stream before the first byte.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<bool, RelayError> {
    let mut got = 0;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        let mut cbuf = [0u64; CMSG_WORDS];
        // SAFETY: msghdr is plain data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_BYTES;
        // SAFETY: `msg` points at live buffers (`iov` into `buf`, `cbuf`) of the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        collect_fds(&msg, fds);
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            // The kernel closed what did not fit; `fds` (closed by the caller's drop) is the rest.
            return Err(Refused::FdsTruncated.into());
        }
        if fds.len() > MAX_FDS {
            return Err(Refused::TooManyFds { fds: fds.len() }.into());
        }
        if n == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(false);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        got += n as usize;
    }
    Ok(true)
}

/// Takes ownership of the descriptors in a received message's control data.
fn collect_fds(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // `msg_controllen`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers returned by CMSG_FIRSTHDR/NXTHDR lie inside the control buffer.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let data_len = (hdr.cmsg_len as usize).saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: the data of an SCM_RIGHTS message is `data_len` bytes of ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..data_len / size_of::<RawFd>() {
                let at = data.wrapping_add(i * size_of::<RawFd>());
                // SAFETY: `at` is inside the data just measured; unaligned read for safety.
                let fd = unsafe { at.cast::<RawFd>().read_unaligned() };
                // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// Sends `buf` with `fds` (at most [`MAX_FDS`]) attached to its first byte.
fn send_with_fds(sock: &UnixStream, buf: &[u8], fds: &[OwnedFd]) -> Result<(), RelayError> {
    if fds.is_empty() {
        return Ok((&*sock).write_all(buf)?);
    }
    if fds.len() > MAX_FDS {
        return Err(Refused::TooManyFds { fds: fds.len() }.into());
    }
    let mut raw = [0 as RawFd; MAX_FDS];
    for (r, f) in raw.iter_mut().zip(fds) {
        *r = f.as_raw_fd();
    }
    let payload = size_of_val(&raw[..fds.len()]);
    let mut cbuf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data, zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: pure computation; at most CMSG_BYTES since fds.len() <= MAX_FDS.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    debug_assert!(msg.msg_controllen <= CMSG_BYTES);
    // SAFETY: the control buffer holds CMSG_SPACE of MAX_FDS ints, so a header fits.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: pure computation.
    let cmsg_len = unsafe { libc::CMSG_LEN(payload as u32) } as usize;
    let header = libc::cmsghdr {
        cmsg_len,
        cmsg_level: libc::SOL_SOCKET,
        cmsg_type: libc::SCM_RIGHTS,
    };
    // SAFETY: `cmsg` points at the start of `cbuf` (u64-aligned, CMSG_BYTES), room for the header.
    unsafe { cmsg.write(header) };
    // SAFETY: as above; the data area lies inside `cbuf`.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    // SAFETY: `data` has room for `payload` bytes (CMSG_SPACE(payload) <= CMSG_BYTES, the size of
    // `cbuf`); `raw` holds them.
    unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), data, payload) };
    // SAFETY: `msg` describes live buffers; the descriptors stay open (we own them) during the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok((&*sock).write_all(&buf[n as usize..])?)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A payload as a message struct (copied: the payload has no alignment).
fn payload_as<T: ByteValued + Default>(req: FrontendReq, payload: &[u8]) -> Result<T, Refused> {
    if payload.len() != size_of::<T>() {
        return Err(Refused::PayloadSize {
            req,
            size: payload.len(),
            expected: size_of::<T>(),
        });
    }
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(payload);
    Ok(v)
}

fn expect_fds(req: FrontendReq, fds: &[OwnedFd], expected: usize) -> Result<(), Refused> {
    if fds.len() != expected {
        return Err(Refused::FdCount {
            req,
            fds: fds.len(),
            expected,
        });
    }
    Ok(())
}

/// One mapped region, in the VMM's address space.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    len: u64,
}

impl Span {
    fn end(&self) -> u64 {
        // Checked when the span was built.
        self.start + self.len
    }
    fn overlaps(&self, o: &Span) -> bool {
        self.start < o.end() && o.start < self.end()
    }
    fn contains(&self, start: u64, len: u64) -> bool {
        start >= self.start && start.checked_add(len).is_some_and(|e| e <= self.end())
    }
}

/// What the relay knows of the connection so far.
#[derive(Debug)]
pub struct Gate {
    policy: Policy,
    /// The last memory table, in VMM addresses.
    memory: Vec<Span>,
    /// The queue size set for each ring (the device's maximum until then).
    ring_sizes: Vec<u32>,
}

impl Gate {
    /// A gate for a fresh connection.
    pub fn new(policy: Policy) -> Self {
        let ring_sizes = vec![policy.max_queue_size; policy.queues.min(64) as usize];
        Gate {
            policy,
            memory: Vec::new(),
            ring_sizes,
        }
    }

    fn ring(&self, req: FrontendReq, index: u64) -> Result<u32, Refused> {
        if index >= u64::from(self.policy.queues) || index >= self.ring_sizes.len() as u64 {
            return Err(Refused::RingIndex {
                req,
                index,
                queues: self.policy.queues,
            });
        }
        Ok(index as u32)
    }

    /// Checks one message from the frontend; `Ok` with the request it is, to forward.
    pub fn check(
        &mut self,
        req: u32,
        flags: u32,
        payload: &[u8],
        fds: &[OwnedFd],
    ) -> Result<FrontendReq, Refused> {
        if flags & FLAG_VERSION_MASK != FLAG_VERSION || flags & !(FLAG_VERSION_MASK | FLAG_NEED_REPLY) != 0 {
            return Err(Refused::Flags { req, flags });
        }
        let code = req;
        let req = FrontendReq::try_from(code).map_err(|()| Refused::Request { req: code })?;
        use FrontendReq as R;
        match req {
            R::GET_FEATURES
            | R::SET_FEATURES
            | R::SET_OWNER
            | R::RESET_OWNER
            | R::GET_PROTOCOL_FEATURES
            | R::GET_QUEUE_NUM
            | R::GET_CONFIG
            | R::SET_CONFIG => {
                // The library checks their payloads; none carries a descriptor.
                expect_fds(req, fds, 0)?;
            }
            R::SET_PROTOCOL_FEATURES => {
                expect_fds(req, fds, 0)?;
                let acked = payload_as::<VhostUserU64>(req, payload)?.value;
                if acked & !self.policy.protocol_features != 0 {
                    return Err(Refused::ProtocolFeatures {
                        acked,
                        offered: self.policy.protocol_features,
                    });
                }
            }
            R::SET_MEM_TABLE => self.check_mem_table(payload, fds)?,
            R::SET_VRING_NUM => {
                expect_fds(req, fds, 0)?;
                let s = payload_as::<VhostUserVringState>(req, payload)?;
                let (index, num) = ({ s.index }, { s.num });
                let index = self.ring(req, u64::from(index))?;
                if num == 0 || !num.is_power_of_two() || num > self.policy.max_queue_size {
                    return Err(Refused::Value {
                        req,
                        index,
                        what: "queue size is not a power of two up to the device's maximum",
                        value: u64::from(num),
                    });
                }
                self.ring_sizes[index as usize] = num;
            }
            R::SET_VRING_ADDR => {
                expect_fds(req, fds, 0)?;
                let a = payload_as::<VhostUserVringAddr>(req, payload)?;
                let index = self.ring(req, u64::from(a.index))?;
                if { a.flags } != 0 {
                    // VHOST_VRING_F_LOG: dirty logging, never offered (no VHOST_F_LOG_ALL).
                    return Err(Refused::Value {
                        req,
                        index,
                        what: "flags",
                        value: u64::from(a.flags),
                    });
                }
                let n = u64::from(self.ring_sizes[index as usize]);
                // Split ring sizes (virtio 1.2, 2.7): descriptor table 16 n, available ring
                // 6 + 2 n, used ring 6 + 8 n, with those alignments.
                self.check_ring(index, "descriptor table", a.descriptor, 16 * n, 16)?;
                self.check_ring(index, "available ring", a.available, 6 + 2 * n, 2)?;
                self.check_ring(index, "used ring", a.used, 6 + 8 * n, 4)?;
            }
            R::SET_VRING_BASE => {
                expect_fds(req, fds, 0)?;
                let s = payload_as::<VhostUserVringState>(req, payload)?;
                let index = self.ring(req, u64::from(s.index))?;
                if { s.num } > u32::from(u16::MAX) {
                    return Err(Refused::Value {
                        req,
                        index,
                        what: "ring base beyond 16 bits (split rings only)",
                        value: u64::from(s.num),
                    });
                }
            }
            R::GET_VRING_BASE => {
                expect_fds(req, fds, 0)?;
                let s = payload_as::<VhostUserVringState>(req, payload)?;
                self.ring(req, u64::from(s.index))?;
            }
            R::SET_VRING_ENABLE => {
                expect_fds(req, fds, 0)?;
                let s = payload_as::<VhostUserVringState>(req, payload)?;
                let index = self.ring(req, u64::from(s.index))?;
                if { s.num } > 1 {
                    return Err(Refused::Value {
                        req,
                        index,
                        what: "enable is neither 0 nor 1",
                        value: u64::from(s.num),
                    });
                }
            }
            R::SET_VRING_KICK | R::SET_VRING_CALL | R::SET_VRING_ERR => {
                let v = payload_as::<VhostUserU64>(req, payload)?.value;
                let index = self.ring(req, v & 0xff)?;
                if v & !(0xff | VRING_NOFD) != 0 {
                    return Err(Refused::Value {
                        req,
                        index,
                        what: "reserved bits set in",
                        value: v,
                    });
                }
                let with_fd = v & VRING_NOFD == 0;
                expect_fds(req, fds, usize::from(with_fd))?;
                if let Some(fd) = fds.first() {
                    check_eventfd(req, fd)?;
                }
            }
            _ => return Err(Refused::Request { req: code }),
        }
        Ok(req)
    }

    fn check_ring(
        &self,
        index: u32,
        what: &'static str,
        addr: u64,
        len: u64,
        align: u64,
    ) -> Result<(), Refused> {
        let refuse = |why| Refused::RingAddress {
            index,
            what,
            addr,
            len,
            why,
        };
        if !addr.is_multiple_of(align) {
            return Err(refuse("is misaligned"));
        }
        if !self.memory.iter().any(|m| m.contains(addr, len)) {
            return Err(refuse("is not inside one region of the memory table"));
        }
        Ok(())
    }

    fn check_mem_table(&mut self, payload: &[u8], fds: &[OwnedFd]) -> Result<(), Refused> {
        let req = FrontendReq::SET_MEM_TABLE;
        let head = size_of::<VhostUserMemory>();
        let region_len = size_of::<VhostUserMemoryRegion>();
        if payload.len() < head {
            return Err(Refused::PayloadSize {
                req,
                size: payload.len(),
                expected: head,
            });
        }
        let m = payload_as::<VhostUserMemory>(req, &payload[..head])?;
        let n = { m.num_regions } as usize;
        if n == 0 || n > MAX_REGIONS || { m.padding1 } != 0 {
            return Err(Refused::Value {
                req,
                index: 0,
                what: "region count (1 to 8, padding 0)",
                value: u64::from(m.num_regions),
            });
        }
        if payload.len() != head + n * region_len {
            return Err(Refused::PayloadSize {
                req,
                size: payload.len(),
                expected: head + n * region_len,
            });
        }
        expect_fds(req, fds, n)?;
        let mut guest = Vec::with_capacity(n);
        let mut vmm = Vec::with_capacity(n);
        let mut total = 0u64;
        for (index, (bytes, fd)) in payload[head..].chunks_exact(region_len).zip(fds).enumerate() {
            let refuse = |why| Refused::Region { index, why };
            let r = payload_as::<VhostUserMemoryRegion>(req, bytes)?;
            let (gpa, size, uva, offset) = ({ r.guest_phys_addr }, { r.memory_size }, { r.user_addr }, {
                r.mmap_offset
            });
            if size == 0 {
                return Err(refuse("is empty"));
            }
            let (Some(_), Some(_), Some(file_end)) = (
                gpa.checked_add(size),
                uva.checked_add(size),
                offset.checked_add(size),
            ) else {
                return Err(refuse("wraps around the address space"));
            };
            total = total
                .checked_add(size)
                .filter(|&t| t <= self.policy.max_memory)
                .ok_or(refuse("takes the memory table beyond the daemon's limit"))?;
            let g = Span {
                start: gpa,
                len: size,
            };
            let v = Span {
                start: uva,
                len: size,
            };
            if guest.iter().any(|o: &Span| o.overlaps(&g)) {
                return Err(refuse("overlaps another region's guest addresses"));
            }
            if vmm.iter().any(|o: &Span| o.overlaps(&v)) {
                return Err(refuse("overlaps another region's VMM addresses"));
            }
            check_region_file(fd.as_fd(), file_end, self.policy.allow_unsealed_memory).map_err(refuse)?;
            guest.push(g);
            vmm.push(v);
        }
        self.memory = vmm;
        Ok(())
    }
}

/// A region's backing file: a regular file (memfd, tmpfs, hugetlbfs) at least `end` bytes long,
/// sealed against shrinking unless `allow_unsealed`.
fn check_region_file(fd: BorrowedFd<'_>, end: u64, allow_unsealed: bool) -> Result<(), &'static str> {
    // SAFETY: stat is plain data; fstat fills it for a descriptor we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: plain system call on a descriptor we hold, writing into `st`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err("its descriptor cannot be inspected");
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("is not backed by a regular file or memfd");
    }
    if u64::try_from(st.st_size).is_ok_and(|len| len < end) {
        // Mapped anyway by vm-memory; the first access past the end would be SIGBUS.
        return Err("reaches past the end of its file");
    }
    if !allow_unsealed {
        // SAFETY: plain system call on a descriptor we hold.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err("its file may shrink under the daemon (no F_SEAL_SHRINK)");
        }
    }
    Ok(())
}

/// A kick/call/error descriptor must be an eventfd; it is made non-blocking.
fn check_eventfd(req: FrontendReq, fd: &OwnedFd) -> Result<(), Refused> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if !link.is_ok_and(|l| l.as_os_str() == "anon_inode:[eventfd]") {
        return Err(Refused::NotEventfd { req });
    }
    // SAFETY: plain system call on a descriptor we hold.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
        // SAFETY: as above. The flag is on the open file description shared with the VMM: its
        // eventfds are non-blocking already (QEMU's are), so it changes nothing for an honest one.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
    }
    Ok(())
}

/// Relays frontend-to-backend messages until either side closes or a message is refused.
fn frontend_to_backend(
    front: &UnixStream,
    back: &UnixStream,
    front_writer: &Mutex<UnixStream>,
    gate: &mut Gate,
) -> Result<(), RelayError> {
    let mut features_seen = false;
    // Early SET_VRING_ENABLE messages, the last one per ring index (so at most one per queue), in
    // arrival order.
    let mut early: Vec<[u8; HDR_LEN + 8]> = Vec::new();
    loop {
        let mut hdr = [0u8; HDR_LEN];
        let mut fds = Vec::new();
        if !recv_exact(front, &mut hdr, &mut fds)? {
            return Ok(());
        }
        let (req, flags, size) = (u32_at(&hdr, 0), u32_at(&hdr, 4), u32_at(&hdr, 8) as usize);
        if size > MAX_PAYLOAD {
            return Err(Refused::Oversized { req, size }.into());
        }
        let mut msg = [0u8; HDR_LEN + MAX_PAYLOAD];
        msg[..HDR_LEN].copy_from_slice(&hdr);
        let msg = &mut msg[..HDR_LEN + size];
        if size > 0 && !recv_exact(front, &mut msg[HDR_LEN..], &mut fds)? {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let request = gate.check(req, flags, &msg[HDR_LEN..], &fds)?;
        match request {
            FrontendReq::SET_FEATURES if !features_seen => {
                features_seen = true;
                send_with_fds(back, msg, &fds)?;
                for m in early.drain(..) {
                    send_with_fds(back, &m, &[])?;
                }
                continue;
            }
            FrontendReq::SET_VRING_ENABLE if !features_seen => {
                let mut m = [0u8; HDR_LEN + 8];
                m.copy_from_slice(msg);
                m[4..8].copy_from_slice(&(flags & !FLAG_NEED_REPLY).to_le_bytes());
                early.retain(|e| e[HDR_LEN..HDR_LEN + 4] != m[HDR_LEN..HDR_LEN + 4]);
                early.push(m);
                tracing::debug!(
                    ring = u32_at(&m, HDR_LEN),
                    enable = u32_at(&m, HDR_LEN + 4),
                    "vhost-user relay: SET_VRING_ENABLE before SET_FEATURES answered and held"
                );
                if flags & FLAG_NEED_REPLY != 0 {
                    let mut reply = [0u8; HDR_LEN + 8];
                    reply[0..4].copy_from_slice(&req.to_le_bytes());
                    reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                    reply[8..12].copy_from_slice(&8u32.to_le_bytes());
                    front_writer
                        .lock()
                        .expect("frontend writer lock")
                        .write_all(&reply)?;
                }
                continue;
            }
            _ => {}
        }
        send_with_fds(back, msg, &fds)?;
    }
}

/// Relays one connection: `front` is the frontend (QEMU), `back` the library's socket; `policy`
/// says what the frontend may do. Returns when either side closes or a frontend message is
/// refused; both are shut down then.
pub fn relay(front: UnixStream, back: UnixStream, policy: Policy) -> Result<(), RelayError> {
    let front_writer = Arc::new(Mutex::new(front.try_clone()?));
    let back_reader = back.try_clone()?;
    let fw = front_writer.clone();
    let replies = std::thread::Builder::new()
        .name("vhost-user relay".into())
        .spawn(move || -> io::Result<()> {
            // Backend-to-frontend traffic is replies without descriptors (these backends open no
            // backend-initiated channel); copy it in whole reads under the writer lock.
            let mut r = back_reader;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if fw
                    .lock()
                    .expect("frontend writer lock")
                    .write_all(&buf[..n])
                    .is_err()
                {
                    break;
                }
            }
            let _ = fw
                .lock()
                .expect("frontend writer lock")
                .shutdown(std::net::Shutdown::Both);
            Ok(())
        })?;
    let mut gate = Gate::new(policy);
    let r = frontend_to_backend(&front, &back, &front_writer, &mut gate);
    let _ = back.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    const SET_FEATURES: u32 = FrontendReq::SET_FEATURES as u32;
    const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;
    /// REPLY_ACK | CONFIG | MQ, as vhost-user-blk offers.
    const OFFERED: u64 = (1 << 3) | (1 << 9) | (1 << 0);

    fn policy() -> Policy {
        Policy {
            protocol_features: OFFERED,
            queues: 2,
            max_queue_size: 256,
            allow_unsealed_memory: false,
            max_memory: DEFAULT_MAX_MEMORY,
        }
    }

    fn msg(req: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&(FLAG_VERSION | flags).to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn vring_state(index: u32, num: u32) -> Vec<u8> {
        [index.to_le_bytes(), num.to_le_bytes()].concat()
    }

    /// Reads one message (header + payload) and its descriptors.
    fn recv_msg(s: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut fds = Vec::new();
        let mut hdr = [0u8; HDR_LEN];
        assert!(recv_exact(s, &mut hdr, &mut fds).unwrap(), "message expected");
        let mut m = hdr.to_vec();
        m.resize(HDR_LEN + u32_at(&hdr, 8) as usize, 0);
        if m.len() > HDR_LEN {
            recv_exact(s, &mut m[HDR_LEN..], &mut fds).unwrap();
        }
        (m, fds)
    }

    /// A memfd of `len` bytes, sealed against shrinking if `sealed`.
    fn memfd(len: u64, sealed: bool) -> OwnedFd {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let raw = unsafe { libc::memfd_create(c"relay-test".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain system call on our descriptor.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
        if sealed {
            // SAFETY: plain system call on our descriptor.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            assert_eq!(r, 0);
        }
        fd
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: plain system call; the result is checked and then owned.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor we own.
        unsafe { OwnedFd::from_raw_fd(raw) }
    }

    /// (gpa, size, uva, offset) regions as a SET_MEM_TABLE payload.
    fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(regions.len() as u32).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for &(gpa, size, uva, off) in regions {
            for v in [gpa, size, uva, off] {
                p.extend_from_slice(&v.to_le_bytes());
            }
        }
        p
    }

    fn check(gate: &mut Gate, req: FrontendReq, payload: &[u8], fds: &[OwnedFd]) -> Result<(), Refused> {
        gate.check(req as u32, FLAG_VERSION, payload, fds).map(|_| ())
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn early_vring_enable_is_answered_and_replayed_after_set_features() {
        let (qemu, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(front, back, policy()));
        daemon.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        qemu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        // GET_FEATURES passes through and its reply comes back.
        (&qemu).write_all(&msg(1, 0, &[])).unwrap();
        let (m, _) = recv_msg(&daemon);
        assert_eq!(m, msg(1, 0, &[]));
        let reply = msg(1, FLAG_REPLY, &(1u64 << 30).to_le_bytes());
        (&daemon).write_all(&reply).unwrap();
        let mut got = vec![0u8; reply.len()];
        (&qemu).read_exact(&mut got).unwrap();
        assert_eq!(got, reply);

        // Early SET_VRING_ENABLE (ring 1 on, ring 0 on then off): acked by the relay, not forwarded.
        for (ring, on) in [(1, 1), (0, 1), (0, 0)] {
            (&qemu)
                .write_all(&msg(SET_VRING_ENABLE, FLAG_NEED_REPLY, &vring_state(ring, on)))
                .unwrap();
            let mut ack = vec![0u8; HDR_LEN + 8];
            (&qemu).read_exact(&mut ack).unwrap();
            assert_eq!(ack, msg(SET_VRING_ENABLE, FLAG_REPLY, &0u64.to_le_bytes()));
        }

        // SET_FEATURES goes through, then the last state of each ring, without NEED_REPLY.
        let features = msg(SET_FEATURES, 0, &(1u64 << 30 | 1 << 32).to_le_bytes());
        (&qemu).write_all(&features).unwrap();
        assert_eq!(recv_msg(&daemon).0, features);
        assert_eq!(recv_msg(&daemon).0, msg(SET_VRING_ENABLE, 0, &vring_state(1, 1)));
        assert_eq!(recv_msg(&daemon).0, msg(SET_VRING_ENABLE, 0, &vring_state(0, 0)));

        // SET_MEM_TABLE with a sealed memfd carries its descriptor across.
        let file = memfd(2 * MIB, true);
        let table = msg(5, 0, &mem_table(&[(0, 2 * MIB, 0x7000_0000_0000, 0)]));
        send_with_fds(&qemu, &table, &[file.as_fd().try_clone_to_owned().unwrap()]).unwrap();
        let (m, fds) = recv_msg(&daemon);
        assert_eq!(m, table);
        assert_eq!(fds.len(), 1);
        let passed = File::from(fds.into_iter().next().unwrap());
        assert_eq!(
            passed.metadata().unwrap().ino(),
            File::from(file).metadata().unwrap().ino()
        );

        // A kick eventfd goes through too.
        let kick = msg(12, 0, &0u64.to_le_bytes());
        send_with_fds(&qemu, &kick, &[eventfd()]).unwrap();
        let (m, fds) = recv_msg(&daemon);
        assert_eq!((m, fds.len()), (kick, 1));

        // Later SET_VRING_ENABLE passes through untouched.
        let late = msg(SET_VRING_ENABLE, FLAG_NEED_REPLY, &vring_state(0, 1));
        (&qemu).write_all(&late).unwrap();
        assert_eq!(recv_msg(&daemon).0, late);

        // A payload larger than the protocol allows ends the relay with a refusal.
        (&qemu)
            .write_all(&msg(5, 0, &vec![0u8; MAX_PAYLOAD + 1]))
            .unwrap();
        assert!(matches!(
            relay.join().unwrap(),
            Err(RelayError::Refused(Refused::Oversized { .. }))
        ));
    }

    /// `n` duplicates of a pipe's write end; the read end sees EOF once every one is closed.
    fn pipe_dups(n: usize) -> (File, Vec<OwnedFd>) {
        let mut p = [0 as RawFd; 2];
        // SAFETY: pipe2 fills the two-element array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: a fresh descriptor we own.
        let r = unsafe { File::from_raw_fd(p[0]) };
        // SAFETY: as above.
        let w = unsafe { OwnedFd::from_raw_fd(p[1]) };
        let dups = (0..n).map(|_| w.try_clone().unwrap()).collect();
        (r, dups)
    }

    /// Whether every write end of the pipe is closed (read returns EOF within 5 s).
    fn all_closed(mut r: File) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let _ = tx.send(matches!(r.read(&mut b), Ok(0)));
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
    }

    /// Sends `buf` with any number of descriptors (the test plays a VMM not bound by MAX_FDS).
    fn send_many(sock: &UnixStream, buf: &[u8], fds: &[OwnedFd]) {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let payload = size_of_val(raw.as_slice()) as u32;
        // SAFETY: pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        let mut cbuf = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: plain data.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_control = cbuf.as_mut_ptr().cast();
        m.msg_controllen = space;
        // SAFETY: the control buffer has CMSG_SPACE(payload) bytes.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&m) };
        // SAFETY: pure computation.
        let cmsg_len = unsafe { libc::CMSG_LEN(payload) } as usize;
        let header = libc::cmsghdr {
            cmsg_len,
            cmsg_level: libc::SOL_SOCKET,
            cmsg_type: libc::SCM_RIGHTS,
        };
        // SAFETY: as above; `cmsg` is the buffer's start.
        unsafe { cmsg.write(header) };
        // SAFETY: the data area has room for `payload` bytes.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), data, payload as usize) };
        // SAFETY: live buffers, open descriptors.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
        assert_eq!(n, buf.len() as isize);
    }

    #[test]
    fn hostile_vmm_too_many_fds() {
        // 29 descriptors with one message (more than the old 128-byte control buffer held), then
        // 8 + 8 over the header and the payload of one message: refused, every descriptor closed,
        // nothing forwarded.
        for split in [false, true] {
            let (qemu, front) = UnixStream::pair().unwrap();
            let (back, daemon) = UnixStream::pair().unwrap();
            let relay = std::thread::spawn(move || relay(front, back, policy()));
            let (pipe, fds) = pipe_dups(if split { 16 } else { 29 });
            let table = msg(5, 0, &mem_table(&[(0, MIB, 0x1000_0000, 0)]));
            if split {
                send_many(&qemu, &table[..HDR_LEN], &fds[..8]);
                send_many(&qemu, &table[HDR_LEN..], &fds[8..]);
            } else {
                send_many(&qemu, &table, &fds);
            }
            drop(fds);
            let r = relay.join().unwrap();
            if split {
                assert!(
                    matches!(r, Err(RelayError::Refused(Refused::TooManyFds { fds: 16 }))),
                    "{r:?}"
                );
            } else {
                assert!(
                    matches!(r, Err(RelayError::Refused(Refused::FdsTruncated))),
                    "{r:?}"
                );
            }
            assert!(all_closed(pipe), "every received descriptor closed");
            let mut b = [0u8; 1];
            assert_eq!((&daemon).read(&mut b).unwrap(), 0, "nothing reached the daemon");
        }
    }

    #[test]
    fn hostile_vmm_too_many_fds_never_reach_the_send_buffer() {
        // The send side refuses more than MAX_FDS by itself: its control buffer is sized for them.
        let (a, b) = UnixStream::pair().unwrap();
        let (pipe, fds) = pipe_dups(29);
        let r = send_with_fds(&a, &msg(5, 0, &[0u8; 8]), &fds);
        assert!(
            matches!(r, Err(RelayError::Refused(Refused::TooManyFds { fds: 29 }))),
            "{r:?}"
        );
        let (pipe8, fds8) = pipe_dups(MAX_FDS);
        send_with_fds(&a, &msg(5, 0, &[0u8; 8]), &fds8).unwrap();
        let (m, got) = recv_msg(&b);
        assert_eq!((m.len(), got.len()), (HDR_LEN + 8, MAX_FDS));
        drop((fds, fds8, got));
        assert!(all_closed(pipe) && all_closed(pipe8));
    }

    #[test]
    fn hostile_vmm_fds_on_messages_that_take_none() {
        let mut gate = Gate::new(policy());
        let r = check(&mut gate, FrontendReq::GET_FEATURES, &[], &[eventfd()]);
        assert!(matches!(r, Err(Refused::FdCount { expected: 0, .. })), "{r:?}");
        let r = check(
            &mut gate,
            FrontendReq::SET_VRING_NUM,
            &vring_state(0, 8),
            &[eventfd()],
        );
        assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
    }

    #[test]
    fn hostile_vmm_overlapping_regions() {
        let mut gate = Gate::new(policy());
        let fds = || vec![memfd(2 * MIB, true), memfd(2 * MIB, true)];
        // Guest addresses overlap (second starts inside the first).
        let p = mem_table(&[(0, 2 * MIB, 0x1000_0000, 0), (MIB, 2 * MIB, 0x2000_0000, 0)]);
        let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &fds());
        assert!(matches!(r, Err(Refused::Region { index: 1, .. })), "{r:?}");
        // VMM addresses overlap.
        let p = mem_table(&[(0, 2 * MIB, 0x1000_0000, 0), (4 * MIB, 2 * MIB, 0x1010_0000, 0)]);
        let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &fds());
        assert!(matches!(r, Err(Refused::Region { index: 1, .. })), "{r:?}");
        // Disjoint: accepted.
        let p = mem_table(&[(0, 2 * MIB, 0x1000_0000, 0), (4 * MIB, 2 * MIB, 0x2000_0000, 0)]);
        check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &fds()).unwrap();
    }

    #[test]
    fn hostile_vmm_region_past_end_of_file() {
        let mut gate = Gate::new(policy());
        // 4 MiB claimed of a 2 MiB file; and a 1 MiB region at offset 1.5 MiB of it.
        for (size, off) in [(4 * MIB, 0), (MIB, 3 * MIB / 2)] {
            let p = mem_table(&[(0, size, 0x1000_0000, off)]);
            let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(2 * MIB, true)]);
            assert!(
                matches!(
                    r,
                    Err(Refused::Region {
                        why: "reaches past the end of its file",
                        ..
                    })
                ),
                "{r:?}"
            );
        }
        // Addresses that wrap, and an empty region.
        for (gpa, size, uva, off) in [
            (u64::MAX - 10, MIB, 0, 0),
            (0, MIB, u64::MAX, 0),
            (0, MIB, 0, u64::MAX),
            (0, 0, 0, 0),
        ] {
            let p = mem_table(&[(gpa, size, uva, off)]);
            let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(2 * MIB, true)]);
            assert!(matches!(r, Err(Refused::Region { .. })), "{r:?}");
        }
        // A pipe is not memory.
        let (_r, mut w) = pipe_dups(1);
        let p = mem_table(&[(0, MIB, 0x1000_0000, 0)]);
        let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[w.pop().unwrap()]);
        assert!(matches!(r, Err(Refused::Region { .. })), "{r:?}");
    }

    #[test]
    fn hostile_vmm_unsealed_memory() {
        let p = mem_table(&[(0, MIB, 0x1000_0000, 0)]);
        let mut gate = Gate::new(policy());
        let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(MIB, false)]);
        assert!(matches!(r, Err(Refused::Region { .. })), "{r:?}");
        let mut lenient = Gate::new(Policy {
            allow_unsealed_memory: true,
            ..policy()
        });
        check(&mut lenient, FrontendReq::SET_MEM_TABLE, &p, &[memfd(MIB, false)]).unwrap();
    }

    #[test]
    fn hostile_vmm_too_many_regions_or_too_much_memory() {
        let mut gate = Gate::new(policy());
        let regions: Vec<_> = (0..9u64)
            .map(|i| (i * MIB, MIB, 0x1000_0000 + i * MIB, 0))
            .collect();
        let fds: Vec<_> = (0..9).map(|_| memfd(MIB, true)).collect();
        let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &mem_table(&regions), &fds);
        assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
        // Fewer descriptors than regions.
        let r = check(
            &mut gate,
            FrontendReq::SET_MEM_TABLE,
            &mem_table(&regions[..2]),
            &fds[..1],
        );
        assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
        let mut small = Gate::new(Policy {
            max_memory: MIB,
            ..policy()
        });
        let r = check(
            &mut small,
            FrontendReq::SET_MEM_TABLE,
            &mem_table(&regions[..2]),
            &fds[..2],
        );
        assert!(matches!(r, Err(Refused::Region { index: 1, .. })), "{r:?}");
    }

    #[test]
    fn hostile_vmm_queue_size_and_ring_base() {
        let mut gate = Gate::new(policy());
        for num in [0, 100, 512, 3] {
            let r = check(&mut gate, FrontendReq::SET_VRING_NUM, &vring_state(0, num), &[]);
            assert!(matches!(r, Err(Refused::Value { .. })), "size {num}: {r:?}");
        }
        check(&mut gate, FrontendReq::SET_VRING_NUM, &vring_state(0, 128), &[]).unwrap();
        let r = check(
            &mut gate,
            FrontendReq::SET_VRING_BASE,
            &vring_state(0, 0x1_0000),
            &[],
        );
        assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
        check(
            &mut gate,
            FrontendReq::SET_VRING_BASE,
            &vring_state(0, 0xffff),
            &[],
        )
        .unwrap();
    }

    #[test]
    fn hostile_vmm_ring_index_beyond_queues() {
        let mut gate = Gate::new(policy());
        for req in [
            FrontendReq::SET_VRING_NUM,
            FrontendReq::SET_VRING_BASE,
            FrontendReq::GET_VRING_BASE,
            FrontendReq::SET_VRING_ENABLE,
        ] {
            let r = check(&mut gate, req, &vring_state(2, 1), &[]);
            assert!(
                matches!(r, Err(Refused::RingIndex { index: 2, .. })),
                "{req:?}: {r:?}"
            );
        }
        let r = check(
            &mut gate,
            FrontendReq::SET_VRING_KICK,
            &5u64.to_le_bytes(),
            &[eventfd()],
        );
        assert!(matches!(r, Err(Refused::RingIndex { .. })), "{r:?}");
        let r = check(&mut gate, FrontendReq::SET_VRING_ENABLE, &vring_state(0, 2), &[]);
        assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
    }

    #[test]
    fn hostile_vmm_ring_outside_memory() {
        let mut gate = Gate::new(policy());
        let addr = |desc: u64, avail: u64, used: u64| {
            let mut p = Vec::new();
            p.extend_from_slice(&0u32.to_le_bytes()); // index
            p.extend_from_slice(&0u32.to_le_bytes()); // flags
            for v in [desc, used, avail, 0] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            p
        };
        let base = 0x1000_0000u64;
        // No memory table yet.
        let r = check(
            &mut gate,
            FrontendReq::SET_VRING_ADDR,
            &addr(base, base + 0x1000, base + 0x2000),
            &[],
        );
        assert!(matches!(r, Err(Refused::RingAddress { .. })), "{r:?}");
        let p = mem_table(&[(0, MIB, base, 0)]);
        check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(MIB, true)]).unwrap();
        check(&mut gate, FrontendReq::SET_VRING_NUM, &vring_state(0, 256), &[]).unwrap();
        check(
            &mut gate,
            FrontendReq::SET_VRING_ADDR,
            &addr(base, base + 0x1000, base + 0x2000),
            &[],
        )
        .unwrap();
        for (d, a, u) in [
            // The used ring (6 + 8 * 256 bytes) runs past the region's end.
            (base, base + 0x1000, base + MIB - 0x100),
            // Outside any region.
            (base + 2 * MIB, base + 0x1000, base + 0x2000),
            // Misaligned descriptor table.
            (base + 8, base + 0x1000, base + 0x2000),
            // Wraps.
            (u64::MAX - 15, base + 0x1000, base + 0x2000),
        ] {
            let r = check(&mut gate, FrontendReq::SET_VRING_ADDR, &addr(d, a, u), &[]);
            assert!(matches!(r, Err(Refused::RingAddress { .. })), "{r:?}");
        }
        // The LOG flag (dirty logging is never offered).
        let mut p = addr(base, base + 0x1000, base + 0x2000);
        p[4] = 1;
        let r = check(&mut gate, FrontendReq::SET_VRING_ADDR, &p, &[]);
        assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
    }

    #[test]
    fn hostile_vmm_unoffered_protocol_features_and_unserved_requests() {
        let mut gate = Gate::new(policy());
        // LOG_SHMFD (1) and INFLIGHT_SHMFD (12) were never offered.
        for acked in [OFFERED | 1 << 1, OFFERED | 1 << 12, u64::MAX] {
            let r = check(
                &mut gate,
                FrontendReq::SET_PROTOCOL_FEATURES,
                &acked.to_le_bytes(),
                &[],
            );
            assert!(matches!(r, Err(Refused::ProtocolFeatures { .. })), "{r:?}");
        }
        check(
            &mut gate,
            FrontendReq::SET_PROTOCOL_FEATURES,
            &OFFERED.to_le_bytes(),
            &[],
        )
        .unwrap();
        // An absurd SET_LOG_BASE (mmap size 2^63), the INFLIGHT messages, ADD_MEM_REG, and the
        // requests the library serves without any feature check.
        let log = [(1u64 << 63).to_le_bytes(), 0u64.to_le_bytes()].concat();
        for (req, payload, fds) in [
            (FrontendReq::SET_LOG_BASE, log.clone(), 1),
            (FrontendReq::SET_LOG_FD, Vec::new(), 1),
            (FrontendReq::GET_INFLIGHT_FD, vec![0u8; 16], 0),
            (FrontendReq::SET_INFLIGHT_FD, vec![0u8; 16], 1),
            (FrontendReq::ADD_MEM_REG, vec![0u8; 40], 1),
            (FrontendReq::GPU_SET_SOCKET, Vec::new(), 1),
            (FrontendReq::SET_DEVICE_STATE_FD, vec![0u8; 8], 1),
            (FrontendReq::SET_BACKEND_REQ_FD, Vec::new(), 1),
            (FrontendReq::POSTCOPY_ADVISE, Vec::new(), 0),
        ] {
            let fds: Vec<_> = (0..fds).map(|_| memfd(MIB, true)).collect();
            let r = check(&mut gate, req, &payload, &fds);
            assert!(matches!(r, Err(Refused::Request { .. })), "{req:?}: {r:?}");
        }
        let r = gate.check(9999, FLAG_VERSION, &[], &[]);
        assert!(matches!(r, Err(Refused::Request { req: 9999 })), "{r:?}");
    }

    #[test]
    fn hostile_vmm_bad_header_flags() {
        let mut gate = Gate::new(policy());
        for flags in [0, 2, FLAG_VERSION | FLAG_REPLY, FLAG_VERSION | 0x100] {
            let r = gate.check(1, flags, &[], &[]);
            assert!(matches!(r, Err(Refused::Flags { .. })), "{flags:#x}: {r:?}");
        }
        gate.check(1, FLAG_VERSION | FLAG_NEED_REPLY, &[], &[]).unwrap();
    }

    #[test]
    fn hostile_vmm_kick_fd_not_an_eventfd() {
        let mut gate = Gate::new(policy());
        for req in [
            FrontendReq::SET_VRING_KICK,
            FrontendReq::SET_VRING_CALL,
            FrontendReq::SET_VRING_ERR,
        ] {
            let (_r, mut w) = pipe_dups(1);
            let r = check(&mut gate, req, &0u64.to_le_bytes(), &[w.pop().unwrap()]);
            assert!(matches!(r, Err(Refused::NotEventfd { .. })), "{req:?}: {r:?}");
            // Bit 8 (no descriptor) with a descriptor, and no descriptor without bit 8.
            let r = check(&mut gate, req, &0x100u64.to_le_bytes(), &[eventfd()]);
            assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
            let r = check(&mut gate, req, &0u64.to_le_bytes(), &[]);
            assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
            check(&mut gate, req, &0x100u64.to_le_bytes(), &[]).unwrap();
            // An eventfd is accepted and made non-blocking.
            let e = eventfd();
            check(&mut gate, req, &1u64.to_le_bytes(), std::slice::from_ref(&e)).unwrap();
            // SAFETY: plain system call on our descriptor.
            let fl = unsafe { libc::fcntl(e.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(fl & libc::O_NONBLOCK, 0);
        }
    }
}
