//! What a block request is: an operation, a first sector and its data. Every protocol adapter
//! translates its requests into these; the core validates them and the executors run them.

use std::fmt;

use super::buf::IoBuf;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read sectors into the request's buffers.
    Read,
    /// Write the request's buffers; with `fua`, durable before completion.
    Write {
        /// Force unit access: synced before the request completes.
        fua: bool,
    },
    /// Make every write completed so far durable (`fdatasync`).
    Flush,
    /// Deallocate `sectors` sectors (they read back as zeros afterwards).
    Discard {
        /// Length in sectors.
        sectors: u64,
    },
}

/// An [`Op`] without its arguments, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush.
    Flush,
    /// Discard.
    Discard,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Flush => "flush",
            OpKind::Discard => "discard",
        })
    }
}

impl Op {
    /// The operation's kind.
    pub fn kind(self) -> OpKind {
        match self {
            Op::Read => OpKind::Read,
            Op::Write { .. } => OpKind::Write,
            Op::Flush => OpKind::Flush,
            Op::Discard { .. } => OpKind::Discard,
        }
    }
}

/// A piece of memory a request reads into or writes from, not owned by the request (guest memory
/// mapped by an adapter).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Segment is an address range; whoever built it (`Segment::new`) guarantees the memory stays
// valid until the request completes, from whichever thread executes it.
unsafe impl Send for Segment {}

impl Segment {
    /// A segment of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must stay mapped, readable and (for reads) writable until the request holding
    /// this segment has completed. Other parties (a guest) may access it concurrently; the core only
    /// touches it with system calls and byte copies, never through references.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Segment { ptr, len }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The data of a request.
#[derive(Debug, Default)]
pub enum Data {
    /// No data (flush, discard).
    #[default]
    None,
    /// A heap buffer the request owns (tests, console-like users).
    Owned(Vec<u8>),
    /// Memory owned by someone else, e.g. guest memory, as a scatter list.
    Segments(Vec<Segment>),
    /// Page-aligned memory of its own that the request owns: what the asynchronous executor
    /// ([`AioQueue`](super::AioQueue)) needs, since it keeps the buffer until the kernel is done.
    Buf(IoBuf),
}

impl Data {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Data::None => 0,
            Data::Owned(v) => v.len(),
            Data::Segments(s) => s.iter().map(|s| s.len).sum(),
            Data::Buf(b) => b.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request's own buffer, if it has one ([`Data::Buf`]).
    pub fn into_buf(self) -> Option<IoBuf> {
        match self {
            Data::Buf(b) => Some(b),
            _ => None,
        }
    }

    /// The memory as iovecs, valid as long as the data is (and, for segments, as their builder
    /// promised).
    pub(crate) fn iovecs(&mut self) -> Vec<libc::iovec> {
        match self {
            Data::None => Vec::new(),
            Data::Owned(v) => vec![libc::iovec {
                iov_base: v.as_mut_ptr().cast(),
                iov_len: v.len(),
            }],
            Data::Segments(s) => s
                .iter()
                .map(|s| libc::iovec {
                    iov_base: s.ptr.cast(),
                    iov_len: s.len,
                })
                .collect(),
            Data::Buf(b) => {
                let bytes = b.as_mut_slice();
                vec![libc::iovec {
                    iov_base: bytes.as_mut_ptr().cast(),
                    iov_len: bytes.len(),
                }]
            }
        }
    }
}

/// One block request.
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// First sector (ignored by flush).
    pub sector: u64,
    /// The bytes read or written.
    pub data: Data,
}
