//! The switch: a learning L2 switch whose ports are bound to one address or learn a bounded
//! number of them (see the [parent module](super)).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{ETH_HEADER_LEN, MAX_FRAME_LEN, Mac, PortId, PortSink, format_mac};
use crate::{Error, Result};

/// Learned addresses in the whole table, at most; beyond, new addresses are not learned (their
/// frames are still switched) until entries go away with their ports or their ports' quotas.
pub const MAX_LEARNED: usize = 4096;
/// A learning port's quota of learned addresses when [`Switch::add_port`] attaches it.
pub const DEFAULT_LEARNED_PER_PORT: usize = 64;
/// Which source addresses a port may send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPolicy {
    /// Only this one: a guest whose address the daemon configured, the echo peer.
    Bound(Mac),
    /// Any unicast address not bound elsewhere, at most `max` of them remembered at a time (a tap
    /// interface with stations behind it, a guest whose address is not configured).
    Learning {
        /// The port's quota of learned addresses.
        max: usize,
    },
}

/// Why a port could not be bound to an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// Another port is bound to it.
    #[error("MAC {} is already bound to port {port}", format_mac(mac))]
    InUse {
        /// The address.
        mac: Mac,
        /// The port holding it.
        port: PortId,
    },
    /// A group address cannot be a port's own.
    #[error("MAC {} is a multicast address", format_mac(mac))]
    Multicast {
        /// The address.
        mac: Mac,
    },
}

/// Counts kept by the switch.
#[derive(Debug, Default)]
pub struct SwitchStats {
    /// Frames sent into the switch.
    pub frames_in: AtomicU64,
    /// Frames forwarded to exactly one port.
    pub unicast: AtomicU64,
    /// Frames flooded (broadcast, multicast, unknown unicast to the learning ports).
    pub flooded: AtomicU64,
    /// Frames dropped because the destination is on the sending port.
    pub filtered: AtomicU64,
    /// Frames dropped for a source address their port may not use (also counted per port).
    pub spoofed: AtomicU64,
    /// Frames refused for their length (shorter than a header, longer than [`MAX_FRAME_LEN`]).
    pub bad_length: AtomicU64,
    /// New addresses not learned because the table was full.
    pub learn_refused: AtomicU64,
    /// Learned addresses that moved from one learning port to another.
    pub moved: AtomicU64,
}

/// One port's counts ([`Switch::port_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounts {
    /// Frames it sent into the switch.
    pub frames_in: u64,
    /// Of those, dropped for a source address it may not use.
    pub spoofed: u64,
    /// Addresses learned on it now.
    pub learned: usize,
    /// Its own learned addresses forgotten to make room for newer ones.
    pub evicted: u64,
}

struct Port {
    sink: Arc<dyn PortSink>,
    policy: PortPolicy,
    /// Addresses learned on it, oldest first.
    learned: VecDeque<Mac>,
    counts: PortCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Bound(PortId),
    Learned(PortId),
}

impl Entry {
    fn port(self) -> PortId {
        match self {
            Entry::Bound(p) | Entry::Learned(p) => p,
        }
    }
}

#[derive(Default)]
struct Inner {
    ports: Vec<Option<Port>>,
    table: HashMap<Mac, Entry>,
    learned_total: usize,
}

/// A learning L2 switch with bound ports.
#[derive(Default)]
pub struct Switch {
    inner: Mutex<Inner>,
    stats: SwitchStats,
}

impl fmt::Debug for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().expect("switch lock");
        f.debug_struct("Switch")
            .field("ports", &inner.ports.iter().filter(|p| p.is_some()).count())
            .field("table", &inner.table.len())
            .field("learned", &inner.learned_total)
            .field("stats", &self.stats)
            .finish()
    }
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Inner {
    /// Forgets `mac` from the learned list of `port` (if it is there).
    fn unlearn(&mut self, port: PortId, mac: &Mac) {
        if let Some(Some(p)) = self.ports.get_mut(port)
            && let Some(i) = p.learned.iter().position(|m| m == mac)
        {
            p.learned.remove(i);
            p.counts.learned = p.learned.len();
            self.learned_total -= 1;
        }
    }

    /// Learns `src` on learning port `from` (quota `max`); returns whether the address moved from
    /// another port and whether the table refused it for being full.
    fn learn(&mut self, from: PortId, max: usize, src: Mac) -> (bool, bool) {
        let mut moved = false;
        match self.table.get(&src).copied() {
            Some(Entry::Learned(p)) if p == from => return (false, false),
            Some(Entry::Learned(p)) => {
                self.unlearn(p, &src);
                self.table.remove(&src);
                moved = true;
            }
            Some(Entry::Bound(_)) => unreachable!("checked by the caller"),
            None => {}
        }
        let port = self.ports[from].as_mut().expect("sending port exists");
        if port.learned.len() >= max.max(1) {
            // Make room from this port's own entries, oldest first; never another port's.
            if let Some(old) = port.learned.pop_front() {
                port.counts.evicted += 1;
                self.learned_total -= 1;
                self.table.remove(&old);
            }
        } else if self.learned_total >= MAX_LEARNED {
            return (moved, true);
        }
        let port = self.ports[from].as_mut().expect("sending port exists");
        port.learned.push_back(src);
        port.counts.learned = port.learned.len();
        self.learned_total += 1;
        self.table.insert(src, Entry::Learned(from));
        (moved, false)
    }
}

impl Switch {
    /// An empty switch.
    pub fn new() -> Arc<Self> {
        Arc::new(Switch::default())
    }

    /// Attaches a learning port with the default quota ([`DEFAULT_LEARNED_PER_PORT`]); frames for
    /// it go to `sink`.
    pub fn add_port(&self, sink: Arc<dyn PortSink>) -> PortId {
        self.add_port_with(
            sink,
            PortPolicy::Learning {
                max: DEFAULT_LEARNED_PER_PORT,
            },
        )
        .expect("a learning port binds nothing")
    }

    /// Attaches a port with `policy`. Binding an address another port is bound to (or a group
    /// address) is refused; an address a learning port had learned is taken over.
    pub fn add_port_with(
        &self,
        sink: Arc<dyn PortSink>,
        policy: PortPolicy,
    ) -> std::result::Result<PortId, BindError> {
        let mut inner = self.inner.lock().expect("switch lock");
        if let PortPolicy::Bound(mac) = policy {
            if is_multicast(&mac) {
                return Err(BindError::Multicast { mac });
            }
            match inner.table.get(&mac).copied() {
                Some(Entry::Bound(port)) => return Err(BindError::InUse { mac, port }),
                Some(Entry::Learned(p)) => {
                    inner.unlearn(p, &mac);
                    inner.table.remove(&mac);
                }
                None => {}
            }
        }
        let port = Port {
            sink,
            policy,
            learned: VecDeque::new(),
            counts: PortCounts::default(),
        };
        let id = if let Some(free) = inner.ports.iter().position(Option::is_none) {
            inner.ports[free] = Some(port);
            free
        } else {
            inner.ports.push(Some(port));
            inner.ports.len() - 1
        };
        if let PortPolicy::Bound(mac) = policy {
            inner.table.insert(mac, Entry::Bound(id));
        }
        Ok(id)
    }

    /// Detaches a port and forgets its addresses (bound and learned).
    pub fn remove_port(&self, port: PortId) -> Result<()> {
        let mut inner = self.inner.lock().expect("switch lock");
        let removed = match inner.ports.get_mut(port) {
            Some(slot @ Some(_)) => slot.take().expect("checked"),
            _ => return Err(Error::NoSuchPort { port }),
        };
        inner.learned_total -= removed.learned.len();
        inner.table.retain(|_, e| e.port() != port);
        Ok(())
    }

    /// The port an address is bound to or was learned on.
    pub fn lookup(&self, mac: &Mac) -> Option<PortId> {
        self.inner
            .lock()
            .expect("switch lock")
            .table
            .get(mac)
            .map(|e| e.port())
    }

    /// One port's counts, if it exists.
    pub fn port_counts(&self, port: PortId) -> Option<PortCounts> {
        let inner = self.inner.lock().expect("switch lock");
        inner.ports.get(port)?.as_ref().map(|p| p.counts)
    }

    /// The switch's counts.
    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    /// Switches one frame arriving on port `from`: checks its length and its source address
    /// against the port's policy (learning it on a learning port), then delivers it to the port
    /// its destination is on, or floods it: broadcast and multicast to every other port, unknown
    /// unicast to the other learning ports. Sinks run after the switch's lock is released, so a
    /// sink may send.
    pub fn send(&self, from: PortId, frame: &[u8]) -> Result<()> {
        if frame.len() < ETH_HEADER_LEN {
            self.stats.bad_length.fetch_add(1, Ordering::Relaxed);
            return Err(Error::ShortFrame { len: frame.len() });
        }
        if frame.len() > MAX_FRAME_LEN {
            self.stats.bad_length.fetch_add(1, Ordering::Relaxed);
            return Err(Error::FrameTooLong {
                len: frame.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let dst: Mac = frame[0..6].try_into().expect("6 bytes");
        let src: Mac = frame[6..12].try_into().expect("6 bytes");
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let targets: Vec<Arc<dyn PortSink>> = {
            let mut guard = self.inner.lock().expect("switch lock");
            let inner = &mut *guard;
            let Some(Some(port)) = inner.ports.get_mut(from) else {
                return Err(Error::NoSuchPort { port: from });
            };
            port.counts.frames_in += 1;
            let allowed = match port.policy {
                PortPolicy::Bound(mac) => src == mac,
                PortPolicy::Learning { .. } => {
                    !is_multicast(&src) && !matches!(inner.table.get(&src), Some(Entry::Bound(_)))
                }
            };
            if !allowed {
                port.counts.spoofed += 1;
                self.stats.spoofed.fetch_add(1, Ordering::Relaxed);
                return Err(Error::SourceNotAllowed {
                    port: from,
                    mac: format_mac(&src),
                });
            }
            if let PortPolicy::Learning { max } = port.policy {
                let (moved, refused) = inner.learn(from, max, src);
                if moved {
                    self.stats.moved.fetch_add(1, Ordering::Relaxed);
                }
                if refused {
                    self.stats.learn_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            let known = if is_multicast(&dst) {
                None
            } else {
                inner.table.get(&dst).map(|e| e.port())
            };
            match known {
                Some(p) if p == from => {
                    self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
                Some(p) => {
                    self.stats.unicast.fetch_add(1, Ordering::Relaxed);
                    inner.ports[p].iter().map(|p| p.sink.clone()).collect()
                }
                None => {
                    self.stats.flooded.fetch_add(1, Ordering::Relaxed);
                    let unicast = !is_multicast(&dst);
                    inner
                        .ports
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != from)
                        .filter_map(|(_, p)| p.as_ref())
                        .filter(|p| !unicast || matches!(p.policy, PortPolicy::Learning { .. }))
                        .map(|p| p.sink.clone())
                        .collect()
                }
            }
        };
        for t in targets {
            t.deliver(frame);
        }
        Ok(())
    }
}
