//! The block path on the host: one image behind read, write, flush and discard, shared by every
//! protocol adapter (vhost-user-blk, Xen blkback).
//!
//! - [`request`]: what adapters translate their protocol into ([`Request`]: an [`Op`], a first
//!   sector, its [`Data`]);
//! - [`storage`]: where the bytes live ([`Storage`], [`FileStorage`]);
//! - [`core`](mod@core): [`BlockCore`], the one place requests are validated, made durable and
//!   counted ([`BlockCore::prepare`], [`BlockCore::complete`]);
//! - [`buf`]: request memory ([`AlignedBuf`], [`IoBuf`]);
//! - [`executor`]: what moves the bytes between the two core steps: inline on the caller's
//!   thread, a worker pool ([`BlockQueue`]), or Linux AIO ([`AioQueue`]).

pub mod buf;
pub mod core;
pub mod executor;
pub mod request;
pub mod storage;

pub use self::core::{BlockCore, BlockOptions, Finished, Job, Refused, Stats};
pub use buf::{AlignedBuf, IoBuf};
pub use executor::{AioError, AioQueue, BlockQueue, Completion};
pub use request::{Data, Op, OpKind, Request, Segment};
pub use storage::{FileStorage, Storage};

/// Bytes per sector, the unit of every block protocol here ([`ring_protocol::abi::SECTOR_SIZE`]).
pub const SECTOR_SIZE: u64 = ring_protocol::abi::SECTOR_SIZE as u64;

#[cfg(test)]
pub(crate) mod testutil;
