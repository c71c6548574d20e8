//! The requests on nodes: read, write, mkdir, rm, directory, permissions, transactions.

use std::io::{Read, Write};

use ring_protocol::xenstore::{self as wire, Request};

use super::{Error, NO_TX, Perm, Result, TxId, XenStore, lossy, split_nul};

impl<S: Read + Write> XenStore<S> {
    /// The value of `path`, or `None` if it does not exist.
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Option<Vec<u8>>> {
        match self.request(Request::Read { path }, tx, path) {
            Ok(v) => Ok(Some(v)),
            Err(Error::XenStore { error, .. }) if error == "ENOENT" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The value of `path` as text (None if missing).
    pub fn read_string(&mut self, tx: TxId, path: &str) -> Result<Option<String>> {
        Ok(self
            .read(tx, path)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Writes `value` to `path`, creating it (and its parents).
    pub fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<()> {
        self.request(Request::Write { path, value }, tx, path).map(drop)
    }

    /// Creates a directory node.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.request(Request::Mkdir { path }, tx, path).map(drop)
    }

    /// Removes a node and everything below it.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.request(Request::Rm { path }, tx, path).map(drop)
    }

    /// The names of a node's children.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>> {
        self.request(Request::Directory { path }, tx, path)
            .map(|p| split_nul(&p))
    }

    /// Sets a node's permission list (owner first).
    pub fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()> {
        let perms: Vec<String> = perms.iter().map(|p| p.encode()).collect();
        let perms: Vec<&str> = perms.iter().map(String::as_str).collect();
        self.request(Request::SetPerms { path, perms: &perms }, tx, path)
            .map(drop)
    }

    /// A node's permission list.
    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Vec<Perm>> {
        let p = self.request(Request::GetPerms { path }, tx, path)?;
        split_nul(&p)
            .iter()
            .map(|s| {
                Perm::decode(s)
                    .ok_or_else(|| Error::XenStoreProtocol(format!("permission entry {s:?} of {path}")))
            })
            .collect()
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId> {
        let p = self.request(Request::TransactionStart, NO_TX, "")?;
        wire::transaction_id(&p).ok_or_else(|| {
            Error::XenStoreProtocol(format!("transaction id {:?}", lossy(wire::first_string(&p))))
        })
    }

    /// Ends a transaction: commits it (`Ok(true)`), or reports a conflict (`Ok(false)`, `EAGAIN`:
    /// redo it), or aborts it when `commit` is false.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<bool> {
        match self.request(Request::TransactionEnd { commit }, tx, "") {
            Ok(_) => Ok(true),
            Err(Error::XenStore { error, .. }) if error == "EAGAIN" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` in a transaction, redoing it while the commit conflicts (at most `attempts` times).
    pub fn transaction<T>(
        &mut self,
        attempts: usize,
        mut f: impl FnMut(&mut Self, TxId) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..attempts.max(1) {
            let tx = self.transaction_start()?;
            let v = match f(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            if self.transaction_end(tx, true)? {
                return Ok(v);
            }
        }
        Err(Error::XenStoreProtocol(format!(
            "transaction still conflicting after {attempts} attempts"
        )))
    }
}
