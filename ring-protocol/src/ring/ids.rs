//! Id slabs: hand out request ids and validate the ids a peer sends back.
//!
//! A response's id is peer data like any other: it may be out of range, or name a request that is not
//! outstanding. [`IdSlab`] (fixed capacity, no allocation) and [`IdSlabBox`] (capacity chosen at run
//! time, `alloc` feature) map ids to the caller's per-request state and refuse both kinds of bad id with
//! a typed error, so a driver never indexes or dereferences anything with an unchecked id.

use core::fmt;

use crate::{Error, Result};

/// Marks the end of the free list.
const NONE: u32 = u32::MAX;

enum Entry<T> {
    Free { next: u32 },
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
            let next = if i + 1 < n { (i + 1) as u32 } else { NONE };
            *e = Entry::Free { next };
        }
        Core {
            free_head: if n == 0 { NONE } else { 0 },
            in_flight: 0,
        }
    }

    fn insert<T>(&mut self, entries: &mut [Entry<T>], value: T) -> Result<u32> {
        let id = self.free_head;
        let Some(slot) = entries.get_mut(id as usize) else {
            return Err(Error::IdsExhausted {
                capacity: entries.len(),
            });
        };
        let Entry::Free { next } = *slot else {
            unreachable!("free list points at an entry in use");
        };
        *slot = Entry::Used(value);
        self.free_head = next;
        self.in_flight += 1;
        Ok(id)
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
        let old = core::mem::replace(&mut entries[i], Entry::Free { next: self.free_head });
        let Entry::Used(value) = old else {
            unreachable!("lookup returned a free entry");
        };
        self.free_head = i as u32;
        self.in_flight -= 1;
        Ok(value)
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
/// ```
pub struct IdSlab<T, const N: usize> {
    entries: [Entry<T>; N],
    core: Core,
}

impl<T, const N: usize> IdSlab<T, N> {
    /// An empty slab with ids `0..N` free.
    pub fn new() -> Self {
        let mut entries = core::array::from_fn(|_| Entry::Free { next: NONE });
        let core = Core::new(&mut entries);
        Self { entries, core }
    }

    /// Number of ids (`N`).
    pub fn capacity(&self) -> usize {
        N
    }

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
        self.core.in_flight == N
    }

    /// Stores `value` and returns its id, which is below `N`.
    ///
    /// # Errors
    /// [`Error::IdsExhausted`] if all `N` ids are in flight.
    pub fn insert(&mut self, value: T) -> Result<u32> {
        self.core.insert(&mut self.entries, value)
    }

    /// Validates an id returned by the peer and releases it, returning its state.
    ///
    /// # Errors
    /// [`Error::IdOutOfRange`] if `id >= N`; [`Error::IdNotInFlight`] if the id is free.
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
        let mut entries: alloc::boxed::Box<[Entry<T>]> =
            (0..capacity).map(|_| Entry::Free { next: NONE }).collect();
        let core = Core::new(&mut entries);
        Self { entries, core }
    }

    /// Number of ids.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

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
        self.core.in_flight == self.entries.len()
    }

    /// Stores `value` and returns its id, which is below the capacity.
    ///
    /// # Errors
    /// [`Error::IdsExhausted`] if every id is in flight.
    pub fn insert(&mut self, value: T) -> Result<u32> {
        self.core.insert(&mut self.entries, value)
    }

    /// Validates an id returned by the peer and releases it, returning its state.
    ///
    /// # Errors
    /// [`Error::IdOutOfRange`] if `id` is not below the capacity; [`Error::IdNotInFlight`] if it is free.
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
