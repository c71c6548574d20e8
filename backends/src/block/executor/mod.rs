//! The executors: what moves a prepared request's bytes between its data and the image.
//!
//! There is one interface, the core's: an executor receives a request only as a [`Job`] made by
//! [`BlockCore::prepare`] (validated: range, alignment, read-only) and gives it back only through
//! [`BlockCore::complete`] (short transfers, durability, discard, statistics), which is the only way
//! to get the submitter's tag back. An executor moves bytes and nothing else, so every request is
//! validated, made durable and counted in one place, whichever executor ran it. They differ in how
//! requests are submitted and how completions come back, to fit their callers:
//!
//! - [`inline`]: on the calling thread; the result is returned ([`BlockCore::execute`]).
//!   vhost-user-blk without workers.
//! - [`pool`]: [`BlockQueue`], a bounded queue served by worker threads; the result is handed to
//!   the request's completion callback on the worker. vhost-user-blk with `--workers`.
//! - [`aio`]: [`AioQueue`], Linux native AIO; requests queued with a tag, handed to the kernel in
//!   one `io_submit`, completions signalled on an eventfd and collected by `reap`, each request's
//!   buffer owned by the queue until then. blkback.
//!
//! [`Job`]: crate::block::Job
//! [`BlockCore::prepare`]: crate::block::BlockCore::prepare
//! [`BlockCore::complete`]: crate::block::BlockCore::complete
//! [`BlockCore::execute`]: crate::block::BlockCore::execute

pub mod aio;
pub mod inline;
pub mod pool;

pub use aio::{AioError, AioQueue};
pub use pool::{BlockQueue, Completion};
