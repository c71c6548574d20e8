//! vhost-user frontend messages built from fuzz input, the descriptors they may carry, and a model
//! of what the relay's gate may let through (written from the vhost-user specification and the
//! relay's documented policy, not from its code).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vhost::vhost_user::message::{VhostUserMemory, VhostUserMemoryRegion};

use crate::Input;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_LOG_BASE: u32 = 6;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_CONFIG: u32 = 24;
pub const SET_CONFIG: u32 = 25;

/// Codes the builder picks from (plus, sometimes, any code).
pub const CODES: [u32; 20] = [
    GET_FEATURES,
    SET_FEATURES,
    SET_OWNER,
    4,
    SET_MEM_TABLE,
    SET_LOG_BASE,
    SET_VRING_NUM,
    SET_VRING_ADDR,
    SET_VRING_BASE,
    GET_VRING_BASE,
    SET_VRING_KICK,
    SET_VRING_CALL,
    SET_VRING_ERR,
    GET_PROTOCOL_FEATURES,
    SET_PROTOCOL_FEATURES,
    GET_QUEUE_NUM,
    SET_VRING_ENABLE,
    GET_CONFIG,
    SET_CONFIG,
    40,
];

/// Size of one SET_MEM_TABLE region as the library (and the relay) define it.
pub const REGION: usize = size_of::<VhostUserMemoryRegion>();
/// Size of SET_MEM_TABLE's head.
pub const MEM_HEAD: usize = size_of::<VhostUserMemory>();

/// What a descriptor in the pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An eventfd.
    Eventfd,
    /// A memfd of this size, sealed against shrinking or not.
    Memfd { size: u64, sealed: bool },
    /// The read end of a pipe.
    Pipe,
}

/// Descriptors of each kind, made fresh (the relay closes what it receives; the gate only borrows).
pub fn make(kind: Kind) -> OwnedFd {
    // SAFETY: plain system calls; each returned descriptor is new and owned by the result.
    unsafe {
        let fd = match kind {
            Kind::Eventfd => libc::eventfd(0, libc::EFD_CLOEXEC),
            Kind::Memfd { size, sealed } => {
                let fd = libc::memfd_create(
                    c"pvkit-fuzz".as_ptr(),
                    libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
                );
                assert!(fd >= 0, "memfd_create");
                assert_eq!(libc::ftruncate(fd, size as libc::off_t), 0, "ftruncate");
                if sealed {
                    libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK);
                }
                fd
            }
            Kind::Pipe => {
                let mut p = [0; 2];
                assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe");
                libc::close(p[1]);
                p[0]
            }
        };
        assert!(fd >= 0, "descriptor for {kind:?}");
        OwnedFd::from_raw_fd(fd)
    }
}

/// The kinds the builder picks from.
pub const KINDS: [Kind; 6] = [
    Kind::Eventfd,
    Kind::Memfd {
        size: 0x10000,
        sealed: true,
    },
    Kind::Memfd {
        size: 0x100000,
        sealed: true,
    },
    Kind::Memfd {
        size: 0x10000,
        sealed: false,
    },
    Kind::Pipe,
    Kind::Memfd {
        size: 0x1000,
        sealed: true,
    },
];

/// One message as the frontend sends it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub req: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    /// The kinds of the descriptors sent with it.
    pub fds: Vec<Kind>,
}

impl Msg {
    /// Header and payload on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + self.payload.len());
        b.extend_from_slice(&self.req.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.payload);
        b
    }
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A message from the input: mostly well-formed with hostile values.
pub fn message(i: &mut Input<'_>) -> Msg {
    let req = if i.u8().is_multiple_of(16) {
        i.u32()
    } else {
        CODES[i.below(CODES.len())]
    };
    let flags = match i.u8() % 8 {
        0 => i.u32(),
        1..=3 => 1 | 8,
        _ => 1,
    };
    let index = if i.u8().is_multiple_of(4) {
        i.u32()
    } else {
        u32::from(i.u8() % 3)
    };
    let payload = match req {
        SET_VRING_NUM | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
            let num = match i.u8() % 4 {
                0 => i.u32(),
                1 => 1 << (i.u8() % 10),
                _ => u32::from(i.u8()),
            };
            u32s(&[index, num])
        }
        SET_VRING_ADDR => {
            let mut p = u32s(&[index, if i.u8().is_multiple_of(8) { 1 } else { 0 }]);
            for _ in 0..4 {
                let a = if i.bool() {
                    i.u64()
                } else {
                    0x7f00_0000_0000 + (u64::from(i.u16()) << 4)
                };
                p.extend_from_slice(&a.to_le_bytes());
            }
            p
        }
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            let v = u64::from(index & 0xff)
                | if i.bool() { 0x100 } else { 0 }
                | if i.u8().is_multiple_of(8) { i.u64() } else { 0 };
            v.to_le_bytes().to_vec()
        }
        SET_FEATURES | SET_PROTOCOL_FEATURES | SET_LOG_BASE => {
            let v = if i.bool() { u64::from(i.u8()) } else { i.u64() };
            v.to_le_bytes().to_vec()
        }
        SET_MEM_TABLE => {
            let n = if i.u8().is_multiple_of(8) {
                i.u32()
            } else {
                u32::from(i.u8() % 10)
            };
            let mut p = u32s(&[n, if i.u8().is_multiple_of(16) { 1 } else { 0 }]);
            for r in 0..(n.min(10) as u64) {
                let gpa = if i.bool() {
                    i.u64()
                } else {
                    r * 0x10000 + (u64::from(i.u8()) << 12)
                };
                let size = match i.u8() % 4 {
                    0 => i.u64(),
                    1 => 0,
                    _ => 0x1000 << (i.u8() % 9),
                };
                let uva = if i.bool() {
                    i.u64()
                } else {
                    0x7f00_0000_0000 + r * 0x100000 + (u64::from(i.u8()) << 12)
                };
                let off = if i.bool() {
                    i.u64()
                } else {
                    u64::from(i.u8() % 4) << 12
                };
                let mut reg = Vec::with_capacity(REGION);
                for v in [gpa, size, uva, off] {
                    reg.extend_from_slice(&v.to_le_bytes());
                }
                reg.resize(REGION, 0);
                p.extend(reg);
            }
            if i.u8().is_multiple_of(16) {
                p.truncate(p.len().saturating_sub(1 + usize::from(i.u8() % 8)));
            }
            p
        }
        GET_CONFIG | SET_CONFIG => {
            let mut p = u32s(&[u32::from(i.u8()), u32::from(i.u8()), 0]);
            p.extend_from_slice(i.chunk(64));
            p
        }
        _ => i.chunk(32).to_vec(),
    };
    let n_fds = match req {
        SET_MEM_TABLE if !i.u8().is_multiple_of(4) => payload
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4")))
            .min(10) as usize,
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR if !i.u8().is_multiple_of(4) => {
            usize::from(payload[1] & 1 == 0)
        }
        _ => usize::from(i.u8().is_multiple_of(16)) * usize::from(i.u8() % 40),
    };
    let fds = (0..n_fds)
        .map(|_| {
            if req == SET_MEM_TABLE && !i.u8().is_multiple_of(4) {
                Kind::Memfd {
                    size: 0x100000,
                    sealed: true,
                }
            } else if matches!(req, SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR)
                && !i.u8().is_multiple_of(4)
            {
                Kind::Eventfd
            } else {
                KINDS[i.below(KINDS.len())]
            }
        })
        .collect();
    Msg {
        req,
        flags,
        payload,
        fds,
    }
}

/// What the gate knows of the connection, as the model tracks it.
#[derive(Debug)]
pub struct Model {
    pub offered: u64,
    pub queues: u32,
    pub max_queue: u32,
    pub max_memory: u64,
    /// The last accepted memory table: (VMM address, size).
    pub memory: Vec<(u64, u64)>,
    pub sizes: Vec<u32>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4"))
}

impl Model {
    /// Panics unless message `m` (with descriptors `fds` of `kinds`) was acceptable; updates the
    /// model as the gate must.
    pub fn accepted(&mut self, m: &Msg, fds: &[OwnedFd]) {
        let kinds = &m.fds;
        assert!(fds.len() <= 8, "accepted with {} descriptors", fds.len());
        assert_eq!(m.flags & 3, 1, "accepted with flags {:#x}", m.flags);
        assert_eq!(m.flags & !(3 | 8), 0, "accepted with flags {:#x}", m.flags);
        let p = &m.payload;
        let ring = |index: u32| {
            assert!(index < self.queues, "ring index {index} accepted");
            index as usize
        };
        match m.req {
            GET_FEATURES
            | SET_FEATURES
            | SET_OWNER
            | 4
            | GET_PROTOCOL_FEATURES
            | GET_QUEUE_NUM
            | GET_CONFIG
            | SET_CONFIG => {
                assert!(fds.is_empty(), "request {} with descriptors", m.req);
            }
            SET_PROTOCOL_FEATURES => {
                assert!(fds.is_empty());
                assert_eq!(p.len(), 8);
                assert_eq!(
                    le64(p, 0) & !self.offered,
                    0,
                    "protocol features never offered acked"
                );
            }
            SET_VRING_NUM => {
                assert!(fds.is_empty() && p.len() == 8);
                let q = ring(le32(p, 0));
                let n = le32(p, 4);
                assert!(
                    n.is_power_of_two() && n <= self.max_queue,
                    "queue size {n} accepted"
                );
                self.sizes[q] = n;
            }
            SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
                assert!(fds.is_empty() && p.len() == 8);
                ring(le32(p, 0));
                if m.req == SET_VRING_BASE {
                    assert!(le32(p, 4) <= 0xffff, "ring base beyond 16 bits");
                }
                if m.req == SET_VRING_ENABLE {
                    assert!(le32(p, 4) <= 1);
                }
            }
            SET_VRING_ADDR => {
                assert!(fds.is_empty() && p.len() == 40);
                let q = ring(le32(p, 0));
                assert_eq!(le32(p, 4), 0, "dirty logging accepted");
                let n = u64::from(self.sizes[q]);
                for (at, len, align) in [(8, 16 * n, 16), (24, 6 + 2 * n, 2), (16, 6 + 8 * n, 4)] {
                    let a = le64(p, at);
                    assert_eq!(a % align, 0, "ring at {a:#x} misaligned");
                    assert!(
                        self.memory
                            .iter()
                            .any(|&(s, l)| a >= s && a.checked_add(len).is_some_and(|e| e <= s + l)),
                        "ring at {a:#x} ({len} bytes) outside the memory table {:x?}",
                        self.memory
                    );
                }
            }
            SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
                assert_eq!(p.len(), 8);
                let v = le64(p, 0);
                ring((v & 0xff) as u32);
                assert_eq!(v & !0x1ff, 0, "reserved bits accepted");
                let with_fd = v & 0x100 == 0;
                assert_eq!(fds.len(), usize::from(with_fd));
                if with_fd {
                    assert_eq!(kinds[0], Kind::Eventfd, "a {:?} accepted as an eventfd", kinds[0]);
                }
            }
            SET_MEM_TABLE => {
                let n = le32(p, 0) as usize;
                assert!((1..=8).contains(&n) && le32(p, 4) == 0, "{n} regions accepted");
                assert_eq!(p.len(), MEM_HEAD + n * REGION);
                assert_eq!(fds.len(), n);
                let mut total = 0u64;
                let regs: Vec<[u64; 4]> = (0..n)
                    .map(|r| {
                        let at = MEM_HEAD + r * REGION;
                        [le64(p, at), le64(p, at + 8), le64(p, at + 16), le64(p, at + 24)]
                    })
                    .collect();
                for (r, &[gpa, size, uva, off]) in regs.iter().enumerate() {
                    assert!(size > 0);
                    assert!(gpa.checked_add(size).is_some() && uva.checked_add(size).is_some());
                    let end = off.checked_add(size).expect("file range wraps");
                    match kinds[r] {
                        Kind::Memfd { size: file, sealed } => {
                            assert!(end <= file, "region past the end of its file");
                            assert!(sealed, "an unsealed file accepted");
                        }
                        k => panic!("a {k:?} accepted as guest memory"),
                    }
                    total += size;
                    for &[g2, s2, u2, _] in &regs[..r] {
                        assert!(gpa + size <= g2 || g2 + s2 <= gpa, "overlapping guest addresses");
                        assert!(uva + size <= u2 || u2 + s2 <= uva, "overlapping VMM addresses");
                    }
                }
                assert!(total <= self.max_memory);
                self.memory = regs.iter().map(|r| (r[2], r[1])).collect();
            }
            other => panic!("request {other} accepted"),
        }
    }
}

/// Closes nothing, borrows: the raw numbers of `fds`.
pub fn raw(fds: &[OwnedFd]) -> Vec<i32> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}
