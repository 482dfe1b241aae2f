//! Presence per user, derived from the room's peers: a user is present while at least one
//! of their sockets is open. `join` is announced for a user's first socket and `leave` for
//! their last (contract §5), whatever the number of sockets in between.
//!
//! Kept beside the peers rather than recomputed from them, so that neither a connect nor
//! a departure scans every socket (a ramp to N sockets would otherwise cost O(N²)).

use std::collections::{BTreeMap, HashMap};

use super::peer::Identity;

/// A user present in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// How many of the room's sockets are this user's.
    pub sockets: usize,
    /// The `info` of the user's first socket, as JSON text.
    pub info: Option<String>,
}

/// Users by id (ordered, so `welcome.presence.users` lists the first 100 by user id), and
/// how many sockets want presence frames.
#[derive(Debug, Default)]
pub struct Presence {
    users: BTreeMap<String, Member>,
    /// Sockets of users that are not listed through them (long-poll relays), which still
    /// count against the per-user cap.
    unlisted: HashMap<String, usize>,
    watchers: usize,
}

/// What a change of sockets means for presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The user's first socket: announce a `join`.
    Joined,
    /// The user's last socket: announce a `leave`.
    Left,
    /// The user was and stays present.
    Same,
}

impl Presence {
    /// Counts a socket in; says whether its user just joined.
    pub fn add(&mut self, id: &Identity) -> Change {
        self.watchers += usize::from(id.presence);
        if !id.listed {
            *self.unlisted.entry(id.user.clone()).or_default() += 1;
            return Change::Same;
        }
        match self.users.get_mut(&id.user) {
            Some(m) => {
                m.sockets += 1;
                Change::Same
            }
            None => {
                self.users.insert(
                    id.user.clone(),
                    Member {
                        sockets: 1,
                        info: id.info.clone(),
                    },
                );
                Change::Joined
            }
        }
    }

    /// Counts a socket out; says whether its user just left.
    pub fn remove(&mut self, id: &Identity) -> Change {
        self.watchers = self.watchers.saturating_sub(usize::from(id.presence));
        if !id.listed {
            if let Some(n) = self.unlisted.get_mut(&id.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.unlisted.remove(&id.user);
                }
            }
            return Change::Same;
        }
        let Some(m) = self.users.get_mut(&id.user) else {
            return Change::Same;
        };
        m.sockets = m.sockets.saturating_sub(1);
        if m.sockets == 0 {
            self.users.remove(&id.user);
            Change::Left
        } else {
            Change::Same
        }
    }

    /// Sockets `user` has open.
    pub fn sockets_of(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |m| m.sockets)
            + self.unlisted.get(user).copied().unwrap_or(0)
    }

    /// Sockets that receive presence frames.
    pub fn watchers(&self) -> usize {
        self.watchers
    }

    /// Users present, by id.
    pub fn users(&self) -> &BTreeMap<String, Member> {
        &self.users
    }
}
