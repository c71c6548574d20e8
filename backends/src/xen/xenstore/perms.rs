//! A node's permission list: who may read or write it.

/// Access a domain has to a node; the first entry of a permission list is the owner (who always has
/// full access) and the default for domains not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: both.
    Both,
}

/// One entry of a node's permission list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    /// The domain.
    pub domid: u16,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    pub(super) fn encode(self) -> String {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        format!("{c}{}", self.domid)
    }

    pub(super) fn decode(s: &str) -> Option<Perm> {
        let access = match s.chars().next()? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return None,
        };
        Some(Perm {
            domid: s[1..].parse().ok()?,
            access,
        })
    }
}
