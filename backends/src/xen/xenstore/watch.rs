//! Watches and the bounded queue of watch events (see the [parent module](super)).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::xenstore::{self as wire, Incoming, Request};

use super::{Error, NO_TX, Result, XenStore, lossy};

/// One fired watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed (or the watched path itself when the watch is registered).
    pub path: String,
    /// The token given to [`XenStore::watch`].
    pub token: String,
}

/// Watch events queued at most per connection.
pub const MAX_QUEUED_EVENTS: usize = 64;

#[derive(Debug, Clone)]
pub(super) struct Watch {
    path: String,
    token: String,
    exact: bool,
}

impl<S: Read + Write> XenStore<S> {
    pub(super) fn queue_event(&mut self, path: String, token: String) {
        let count = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        // Ours, and (for an exact watch) for the watched node itself?
        let wanted = self
            .watches
            .iter()
            .any(|w| w.token == token && (!w.exact || w.path == path));
        if !wanted {
            return count(&self.stats.events_filtered);
        }
        if self.events.iter().any(|e| e.path == path && e.token == token) {
            return count(&self.stats.events_coalesced);
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            if !self.events.iter().any(|e| e.token == token) && !self.overflowed.contains(&token) {
                self.overflowed.push(token);
            }
            return count(&self.stats.events_dropped);
        }
        self.events.push_back(WatchEvent { path, token });
        count(&self.stats.events_queued)
    }

    /// Events queued now (at most [`MAX_QUEUED_EVENTS`]).
    pub fn queued_events(&self) -> usize {
        self.events.len() + self.overflowed.len()
    }

    /// Watches `path` (and everything below it); events carry `token`. XenStore fires each new watch
    /// once at registration.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        self.add_watch(path, token, false)
    }

    /// Watches the node `path` only: XenStore also reports changes below it (which whoever owns the
    /// node can create at will), and those events are dropped on arrival, never queued.
    pub fn watch_exact(&mut self, path: &str, token: &str) -> Result<()> {
        self.add_watch(path, token, true)
    }

    fn add_watch(&mut self, path: &str, token: &str, exact: bool) -> Result<()> {
        // Known before the request, so the registration event (which may come first) is kept.
        self.watches.push(Watch {
            path: path.to_owned(),
            token: token.to_owned(),
            exact,
        });
        let r = self
            .request(Request::Watch { path, token }, NO_TX, path)
            .map(drop);
        if r.is_err() {
            self.watches.pop();
        }
        r
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(Request::Unwatch { path, token }, NO_TX, path)?;
        self.watches.retain(|w| !(w.path == path && w.token == token));
        Ok(())
    }

    /// Whether watch events are already queued (so [`next_watch_event`](Self::next_watch_event)
    /// will not block).
    pub fn has_queued_events(&self) -> bool {
        !self.events.is_empty() || !self.overflowed.is_empty()
    }

    /// The next watch event: a queued one, or the next from the stream (blocking).
    pub fn next_watch_event(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if !self.overflowed.is_empty() {
                let token = self.overflowed.remove(0);
                let path = self
                    .watches
                    .iter()
                    .find(|w| w.token == token)
                    .map(|w| w.path.clone())
                    .unwrap_or_default();
                return Ok(WatchEvent { path, token });
            }
            let (h, p) = self.read_msg()?;
            match wire::classify(&h, &p) {
                Ok(Incoming::WatchEvent { path, token }) => self.queue_event(lossy(path), lossy(token)),
                Ok(Incoming::Reply) | Err(ring_protocol::Error::XsUnknownType { .. }) => {
                    return Err(Error::XenStoreProtocol(format!(
                        "unsolicited message of type {} #{} while waiting for a watch event",
                        h.type_, h.req_id
                    )));
                }
                Err(e) => return Err(Error::XenStoreProtocol(e.to_string())),
            }
        }
    }
}
