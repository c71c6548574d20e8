//! Id slabs: hand out request ids and validate the ids a peer sends back.
//!
//! A response's id is peer data like any other: it may be out of range, or name a request that is not
//! outstanding. [`IdSlab`] (fixed capacity, no allocation) and [`IdSlabBox`] (capacity chosen at run
//! time, `alloc` feature) map ids to the caller's per-request state and refuse both kinds of bad id with
//! a typed error, so a driver never indexes or dereferences anything with an unchecked id.
//!
//! Ids come from one of two places:
//! - the slab picks them: [`insert`](IdSlab::insert) hands out a free id ([`next_id`](IdSlab::next_id)
//!   tells which, for a request that must carry its id before it is stored);
//! - someone else picked them: [`insert_at`](IdSlab::insert_at) claims a given id, for protocols where
//!   the id a peer answers with was chosen by another layer (a virtio descriptor head the queue
//!   library allocated). An id already in flight is refused, so two requests never share one.
//!
//! Either way a returned id only ever reaches the caller's state through [`remove`](IdSlab::remove),
//! [`get`](IdSlab::get) or [`get_mut`](IdSlab::get_mut), which refuse it unless it is in flight.
//! Teardown takes what is still in flight with [`take_first`](IdSlab::take_first) or
//! [`drain`](IdSlab::drain).
//!
//! Every operation but `take_first`/`drain`/`iter` (which scan) is O(1): the free ids form a doubly
//! linked list through the free entries.

use core::fmt;

use crate::{Error, Result};

/// Marks the end of the free list.
const NONE: u32 = u32::MAX;

enum Entry<T> {
    Free { prev: u32, next: u32 },
    Used(T),
}

/// Free-list bookkeeping shared by both slab flavours.
#[derive(Debug, Clone, Copy)]
struct Core {
    free_head: u32,
    in_flight: usize,
}

impl Core {
    fn new<T>(entries: &mut [Entry<T>]) -> Self {
        assert!(
            entries.len() < NONE as usize,
            "an id slab holds fewer than 2^32 - 1 ids"
        );
        let n = entries.len();
        for (i, e) in entries.iter_mut().enumerate() {
            let prev = if i == 0 { NONE } else { (i - 1) as u32 };
            let next = if i + 1 < n { (i + 1) as u32 } else { NONE };
            *e = Entry::Free { prev, next };
        }
        Core {
            free_head: if n == 0 { NONE } else { 0 },
            in_flight: 0,
        }
    }

    /// Sets the `prev` (`set_prev`) or `next` link of free entry `at` (nothing for [`NONE`]).
    fn link<T>(entries: &mut [Entry<T>], at: u32, set_prev: bool, to: u32) {
        if at == NONE {
            return;
        }
        match &mut entries[at as usize] {
            Entry::Free { prev, next } => *(if set_prev { prev } else { next }) = to,
            Entry::Used(_) => unreachable!("free list links an entry in use"),
        }
    }

    /// Takes free entry `i` out of the free list and stores `value` in it.
    fn occupy<T>(&mut self, entries: &mut [Entry<T>], i: u32, value: T) {
        let Entry::Free { prev, next } = entries[i as usize] else {
            unreachable!("occupying an entry in use");
        };
        Self::link(entries, prev, false, next);
        Self::link(entries, next, true, prev);
        if self.free_head == i {
            self.free_head = next;
        }
        entries[i as usize] = Entry::Used(value);
        self.in_flight += 1;
    }

    fn insert<T>(&mut self, entries: &mut [Entry<T>], value: T) -> Result<u32> {
        let id = self.free_head;
        if id == NONE {
            return Err(Error::IdsExhausted {
                capacity: entries.len(),
            });
        }
        self.occupy(entries, id, value);
        Ok(id)
    }

    fn insert_at<T>(&mut self, entries: &mut [Entry<T>], id: u64, value: T) -> Result<()> {
        let capacity = entries.len();
        match usize::try_from(id) {
            Ok(i) if i < capacity => match entries[i] {
                Entry::Free { .. } => {
                    self.occupy(entries, i as u32, value);
                    Ok(())
                }
                Entry::Used(_) => Err(Error::IdAlreadyInFlight { id }),
            },
            _ => Err(Error::IdOutOfRange { id, capacity }),
        }
    }

    fn lookup<T>(entries: &[Entry<T>], id: u64) -> Result<usize> {
        let capacity = entries.len();
        match usize::try_from(id) {
            Ok(i) if i < capacity => match entries[i] {
                Entry::Used(_) => Ok(i),
                Entry::Free { .. } => Err(Error::IdNotInFlight { id }),
            },
            _ => Err(Error::IdOutOfRange { id, capacity }),
        }
    }

    fn remove<T>(&mut self, entries: &mut [Entry<T>], id: u64) -> Result<T> {
        let i = Self::lookup(entries, id)?;
        Ok(self.release(entries, i))
    }

    /// Frees entry `i` (in use) and returns its value; it becomes the next id handed out.
    fn release<T>(&mut self, entries: &mut [Entry<T>], i: usize) -> T {
        let old = core::mem::replace(
            &mut entries[i],
            Entry::Free {
                prev: NONE,
                next: self.free_head,
            },
        );
        let Entry::Used(value) = old else {
            unreachable!("releasing a free entry");
        };
        Self::link(entries, self.free_head, true, i as u32);
        self.free_head = i as u32;
        self.in_flight -= 1;
        value
    }

    fn take_first<T>(&mut self, entries: &mut [Entry<T>]) -> Option<(u32, T)> {
        if self.in_flight == 0 {
            return None;
        }
        let i = entries.iter().position(|e| matches!(e, Entry::Used(_)))?;
        Some((i as u32, self.release(entries, i)))
    }
}

fn get<T>(entries: &[Entry<T>], id: u64) -> Result<&T> {
    let i = Core::lookup(entries, id)?;
    match &entries[i] {
        Entry::Used(v) => Ok(v),
        Entry::Free { .. } => Err(Error::IdNotInFlight { id }),
    }
}

fn get_mut<T>(entries: &mut [Entry<T>], id: u64) -> Result<&mut T> {
    let i = Core::lookup(entries, id)?;
    match &mut entries[i] {
        Entry::Used(v) => Ok(v),
        Entry::Free { .. } => Err(Error::IdNotInFlight { id }),
    }
}

fn iter<T>(entries: &[Entry<T>]) -> impl Iterator<Item = (u32, &T)> {
    entries.iter().enumerate().filter_map(|(i, e)| match e {
        Entry::Used(v) => Some((i as u32, v)),
        Entry::Free { .. } => None,
    })
}

/// The operations both slab flavours share (each defines `capacity`).
macro_rules! slab_methods {
    () => {
        /// Number of ids in flight.
        pub fn len(&self) -> usize {
            self.core.in_flight
        }

        /// Whether no id is in flight.
        pub fn is_empty(&self) -> bool {
            self.core.in_flight == 0
        }

        /// Whether every id is in flight.
        pub fn is_full(&self) -> bool {
            self.core.in_flight == self.capacity()
        }

        /// The id the next [`insert`](Self::insert) hands out, if one is free (for a request that
        /// must carry its id before it is stored). Valid until the slab changes.
        pub fn next_id(&self) -> Option<u32> {
            (self.core.free_head != NONE).then_some(self.core.free_head)
        }

        /// Stores `value` and returns its id, which is below the capacity.
        ///
        /// # Errors
        /// [`Error::IdsExhausted`] if every id is in flight.
        pub fn insert(&mut self, value: T) -> Result<u32> {
            self.core.insert(&mut self.entries, value)
        }

        /// Stores `value` under `id`, chosen by someone else (a queue library's descriptor head, say).
        ///
        /// # Errors
        /// [`Error::IdOutOfRange`] if `id` is not below the capacity; [`Error::IdAlreadyInFlight`] if
        /// it is in flight (its state is left alone).
        pub fn insert_at(&mut self, id: u64, value: T) -> Result<()> {
            self.core.insert_at(&mut self.entries, id, value)
        }

        /// Validates an id returned by the peer and releases it, returning its state.
        ///
        /// # Errors
        /// [`Error::IdOutOfRange`] if `id` is not below the capacity; [`Error::IdNotInFlight`] if it is
        /// free.
        pub fn remove(&mut self, id: u64) -> Result<T> {
            self.core.remove(&mut self.entries, id)
        }

        /// The state of an in-flight id.
        ///
        /// # Errors
        /// As [`remove`](Self::remove).
        pub fn get(&self, id: u64) -> Result<&T> {
            get(&self.entries, id)
        }

        /// The state of an in-flight id, mutably.
        ///
        /// # Errors
        /// As [`remove`](Self::remove).
        pub fn get_mut(&mut self, id: u64) -> Result<&mut T> {
            get_mut(&mut self.entries, id)
        }

        /// Whether `id` is in flight (any `u64`; out of range is `false`).
        pub fn contains(&self, id: u64) -> bool {
            Core::lookup(&self.entries, id).is_ok()
        }

        /// The ids in flight with their state, lowest id first.
        pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
            iter(&self.entries)
        }

        /// Releases the in-flight id with the lowest number and returns it with its state; `None` if
        /// nothing is in flight (teardown: fail or reclaim what is still outstanding).
        pub fn take_first(&mut self) -> Option<(u32, T)> {
            self.core.take_first(&mut self.entries)
        }

        /// Releases every id in flight, lowest first, yielding each with its state. Ids not yet
        /// yielded when the iterator is dropped stay in flight.
        pub fn drain(&mut self) -> impl Iterator<Item = (u32, T)> + '_ {
            core::iter::from_fn(move || self.take_first())
        }
    };
}

/// A fixed-capacity table of in-flight requests: `insert` hands out an id below `N` for some per-request
/// state, `remove` takes a peer-supplied id and returns that state only if the id is in range and in
/// flight. Needs no allocator. Use `T = ()` for a plain id allocator.
///
/// Ids are `u32`; protocols with narrower id fields (netif's `u16`) should pick `N` to fit.
///
/// ```
/// use ring_protocol::{Error, ring::IdSlab};
///
/// let mut ids = IdSlab::<&str, 4>::new();
/// let id = ids.insert("read sector 9").unwrap();
/// assert_eq!(ids.remove(u64::from(id)), Ok("read sector 9"));
/// assert_eq!(ids.remove(u64::from(id)), Err(Error::IdNotInFlight { id: u64::from(id) }));
/// assert_eq!(ids.remove(99), Err(Error::IdOutOfRange { id: 99, capacity: 4 }));
///
/// // An id picked elsewhere (a descriptor head): claimed once, refused while in flight.
/// ids.insert_at(3, "flush").unwrap();
/// assert_eq!(ids.insert_at(3, "again"), Err(Error::IdAlreadyInFlight { id: 3 }));
/// assert_eq!(ids.drain().collect::<Vec<_>>(), [(3, "flush")]);
/// ```
pub struct IdSlab<T, const N: usize> {
    entries: [Entry<T>; N],
    core: Core,
}

impl<T, const N: usize> IdSlab<T, N> {
    /// An empty slab with ids `0..N` free.
    pub fn new() -> Self {
        let mut entries = core::array::from_fn(|_| Entry::Free {
            prev: NONE,
            next: NONE,
        });
        let core = Core::new(&mut entries);
        Self { entries, core }
    }

    /// Number of ids (`N`).
    pub fn capacity(&self) -> usize {
        N
    }

    slab_methods!();
}

impl<T, const N: usize> Default for IdSlab<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> fmt::Debug for IdSlab<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdSlab")
            .field("capacity", &N)
            .field("in_flight", &self.core.in_flight)
            .finish()
    }
}

/// [`IdSlab`] with its capacity chosen at run time (`alloc` feature).
#[cfg(feature = "alloc")]
pub struct IdSlabBox<T> {
    entries: alloc::boxed::Box<[Entry<T>]>,
    core: Core,
}

#[cfg(feature = "alloc")]
impl<T> IdSlabBox<T> {
    /// An empty slab with ids `0..capacity` free.
    ///
    /// # Panics
    /// If `capacity >= 2^32 - 1`.
    pub fn new(capacity: usize) -> Self {
        let mut entries: alloc::boxed::Box<[Entry<T>]> = (0..capacity)
            .map(|_| Entry::Free {
                prev: NONE,
                next: NONE,
            })
            .collect();
        let core = Core::new(&mut entries);
        Self { entries, core }
    }

    /// Number of ids.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    slab_methods!();
}

#[cfg(feature = "alloc")]
impl<T> fmt::Debug for IdSlabBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdSlabBox")
            .field("capacity", &self.entries.len())
            .field("in_flight", &self.core.in_flight)
            .finish()
    }
}
