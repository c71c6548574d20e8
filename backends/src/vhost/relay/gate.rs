//! What a frontend may do ([`Policy`]) and the check of every message against it and the
//! connection's state so far ([`Gate`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserMemory, VhostUserMemoryRegion, VhostUserU64, VhostUserVringAddr,
    VhostUserVringState,
};

use super::wire::{expect_fds, payload_as};
use super::{FLAG_NEED_REPLY, FLAG_VERSION, FLAG_VERSION_MASK, MAX_REGIONS, Refused, VRING_NOFD};

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
