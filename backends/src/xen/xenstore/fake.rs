//! A small xenstored for host tests: one store shared by any number of connections (a backend
//! and a "guest" or "toolstack" writing beside it), nodes, permissions, watches (an event goes
//! to the watching connection, before the reply of the write that fired it when that is the
//! same connection), `@releaseDomain`, and transactions whose first commit conflicts. Every
//! connection's requests are counted.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use ring_protocol::abi::xenstore::{XsdSockmsg, XsdSockmsgType};
use zerocopy::{FromBytes, IntoBytes};

use super::{XenStore, split_nul};

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Vec<u8>>,
    perms: BTreeMap<String, Vec<String>>,
    /// (connection, path, token).
    watches: Vec<(usize, String, String)>,
    conns: Vec<Arc<Mutex<UnixStream>>>,
    commits: u32,
}

/// The store.
#[derive(Clone, Default)]
pub(crate) struct FakeXenstored {
    state: Arc<Mutex<State>>,
}

fn send(s: &Mutex<UnixStream>, ty: u32, req: u32, tx: u32, p: &[u8]) {
    let h = XsdSockmsg {
        type_: ty,
        req_id: req,
        tx_id: tx,
        len: p.len() as u32,
    };
    let mut m = h.as_bytes().to_vec();
    m.extend_from_slice(p);
    // A connection whose client went away just stops receiving.
    let _ = s.lock().unwrap().write_all(&m);
}

/// Whether a change of `changed` fires a watch on `watched` (the node, anything below it, or
/// a removed ancestor).
fn fires(watched: &str, changed: &str, removed: bool) -> bool {
    let below = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
    below(changed, watched) || (removed && below(watched, changed))
}

impl FakeXenstored {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A new client connection to the store.
    pub(crate) fn connect(&self) -> XenStore<UnixStream> {
        let (a, b) = UnixStream::pair().unwrap();
        let conn = {
            let mut st = self.state.lock().unwrap();
            st.conns.push(Arc::new(Mutex::new(b.try_clone().unwrap())));
            st.conns.len() - 1
        };
        let store = self.clone();
        std::thread::spawn(move || store.serve(conn, b));
        XenStore::new(a)
    }

    /// Fires `path` for every watch it concerns.
    fn fire(st: &State, path: &str, removed: bool) {
        for (c, w, token) in &st.watches {
            if fires(w, path, removed) {
                let ev = format!("{path}\0{token}\0");
                send(
                    &st.conns[*c],
                    XsdSockmsgType::WatchEvent as u32,
                    0,
                    0,
                    ev.as_bytes(),
                );
            }
        }
    }

    /// The toolstack destroying domain `domid`: its home directory goes, `@releaseDomain` fires.
    pub(crate) fn release_domain(&self, domid: u16) {
        let mut st = self.state.lock().unwrap();
        let home = format!("/local/domain/{domid}");
        st.nodes
            .retain(|k, _| !(k == &home || k.starts_with(&format!("{home}/"))));
        Self::fire(&st, &home, true);
        Self::fire(&st, "@releaseDomain", false);
    }

    /// The value of a node, read directly.
    pub(crate) fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().nodes.get(path).cloned()
    }

    fn serve(&self, conn: usize, mut s: UnixStream) {
        loop {
            let mut hdr = [0u8; 16];
            if s.read_exact(&mut hdr).is_err() {
                let mut st = self.state.lock().unwrap();
                st.watches.retain(|(c, _, _)| *c != conn);
                return;
            }
            let h = XsdSockmsg::read_from_bytes(&hdr).unwrap();
            let mut p = vec![0; h.len as usize];
            s.read_exact(&mut p).unwrap();
            let parts = split_nul(&p);
            let path = parts.first().cloned().unwrap_or_default();
            let mut st = self.state.lock().unwrap();
            let out = st.conns[conn].clone();
            let ok = |body: &[u8]| {
                if body.len() > super::XENSTORE_PAYLOAD_MAX {
                    // What xenstored answers when a reply would not fit a message.
                    send(&out, XsdSockmsgType::Error as u32, h.req_id, h.tx_id, b"E2BIG\0");
                } else {
                    send(&out, h.type_, h.req_id, h.tx_id, body);
                }
            };
            let err = |name: &str| {
                send(
                    &out,
                    XsdSockmsgType::Error as u32,
                    h.req_id,
                    h.tx_id,
                    format!("{name}\0").as_bytes(),
                )
            };
            match XsdSockmsgType::from_wire(h.type_).unwrap() {
                XsdSockmsgType::Read => match st.nodes.get(&path) {
                    Some(v) => ok(&v.clone()),
                    None => err("ENOENT"),
                },
                XsdSockmsgType::Write => {
                    let at = p.iter().position(|&b| b == 0).unwrap() + 1;
                    st.nodes.insert(path.clone(), p[at..].to_vec());
                    Self::fire(&st, &path, false);
                    ok(b"OK\0");
                }
                XsdSockmsgType::Mkdir => {
                    st.nodes.entry(path.clone()).or_default();
                    Self::fire(&st, &path, false);
                    ok(b"OK\0");
                }
                XsdSockmsgType::Rm => {
                    st.nodes
                        .retain(|k, _| !(k == &path || k.starts_with(&format!("{path}/"))));
                    Self::fire(&st, &path, true);
                    ok(b"OK\0");
                }
                XsdSockmsgType::Directory => {
                    let prefix = format!("{path}/");
                    let mut names: Vec<String> = st
                        .nodes
                        .keys()
                        .filter_map(|k| k.strip_prefix(&prefix))
                        .map(|r| r.split('/').next().unwrap().to_owned())
                        .collect();
                    names.dedup();
                    let body: Vec<u8> = names.iter().flat_map(|n| n.bytes().chain([0])).collect();
                    ok(&body);
                }
                XsdSockmsgType::SetPerms => {
                    st.perms.insert(path, parts[1..].to_vec());
                    ok(b"OK\0");
                }
                XsdSockmsgType::GetPerms => match st.perms.get(&path) {
                    Some(list) => {
                        let body: Vec<u8> = list.iter().flat_map(|n| n.bytes().chain([0])).collect();
                        ok(&body);
                    }
                    None => err("ENOENT"),
                },
                XsdSockmsgType::Watch => {
                    st.watches.push((conn, path.clone(), parts[1].clone()));
                    ok(b"OK\0");
                    let ev = format!("{path}\0{}\0", parts[1]);
                    send(&out, XsdSockmsgType::WatchEvent as u32, 0, 0, ev.as_bytes());
                }
                XsdSockmsgType::TransactionStart => ok(b"7\0"),
                XsdSockmsgType::TransactionEnd => {
                    assert_eq!(h.tx_id, 7, "transaction id carried in the header");
                    st.commits += 1;
                    if st.commits == 1 {
                        err("EAGAIN");
                    } else {
                        ok(b"OK\0");
                    }
                }
                _ => err("EINVAL"),
            }
        }
    }
}
