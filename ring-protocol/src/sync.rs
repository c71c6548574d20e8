//! The one place the crate takes its atomics from.
//!
//! Normally these are `core::sync::atomic`. Under `--cfg loom` they are loom's model-checked atomics, so
//! the loom tests (`tests/loom.rs`) explore every interleaving and weak-memory outcome of the shared
//! ring's index publication and event re-arm code.
//!
//! Shared ring memory is accessed as an array of [`AtomicU32`] words (see `ring::raw`), which is what
//! lets the same code run over a loom-allocated word array under loom and over real pages otherwise.
//! Outside loom, slot copies may also use `AtomicU64` (same orderings; see `ring::raw`). The byte rings use `core` atomics directly and are not loom-modelled.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, Ordering, fence};
