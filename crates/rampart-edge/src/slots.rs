//! Connection slots: how many client connections the edge holds at once,
//! in all and from one client, as nginx's `worker_connections` and
//! `limit_conn` do.
//!
//! The cap in all keeps a flood of connections from exhausting memory and
//! file descriptors; the cap per client keeps one client from taking every
//! slot and so locking everyone else out. A client is its address, an IPv6
//! one its /64 (one subscriber holds a whole /64), as for rate limits. A
//! connection past either cap is closed as soon as it is accepted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The edge holds `max_connections`.
    Edge,
    /// This client holds `max_connections_per_client`.
    Client,
}

/// The slots of one edge.
#[derive(Debug)]
pub struct Slots {
    all: Arc<Semaphore>,
    per_client: u32,
    held: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// `None` until the client is known (see [`Slots::take_edge`]).
    client: Option<IpAddr>,
    held: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(client) = self.client else {
            return;
        };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&client);
            }
        }
    }
}

/// The client `ip` stands for: an IPv4 address itself, an IPv6 one its
/// /64 (also the rate limits' client, `phases::push_client_key`).
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

impl Slots {
    /// `max` connections in all, `per_client` from one client (each at
    /// least 1).
    pub fn new(max: usize, per_client: u32) -> Slots {
        Slots {
            all: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            per_client: per_client.max(1),
            held: Arc::default(),
        }
    }

    /// A slot for a connection from `peer`, or which cap it is over.
    pub fn take(&self, peer: IpAddr) -> Result<Slot, Full> {
        let mut slot = self.take_edge()?;
        self.claim(&mut slot, peer)?;
        Ok(slot)
    }

    /// A slot counted against the cap in all only, for a connection whose
    /// client is not known yet (its PROXY header is still to come); its
    /// client is counted by [`Slots::claim`].
    pub fn take_edge(&self) -> Result<Slot, Full> {
        let permit = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Edge)?;
        Ok(Slot {
            _permit: permit,
            client: None,
            held: Arc::clone(&self.held),
        })
    }

    /// Counts `slot` against `client`'s cap, or says it is over it (the
    /// connection is then closed, which gives the slot back). A slot
    /// counts against one client only: a second claim changes nothing.
    pub fn claim(&self, slot: &mut Slot, client: IpAddr) -> Result<(), Full> {
        if slot.client.is_some() {
            return Ok(());
        }
        let client = client_of(client);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(client).or_insert(0);
        if *n >= self.per_client {
            return Err(Full::Client);
        }
        *n += 1;
        slot.client = Some(client);
        Ok(())
    }

    /// Clients holding connections now (for tests and status).
    pub fn clients(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_client_and_slots_come_back() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Full::Client);
        let b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), Full::Edge);
        drop(a1);
        assert!(slots.take(b).is_ok());
        drop((a2, b1));
        assert_eq!(slots.clients(), 0);
    }

    #[test]
    fn a_slot_taken_before_its_client_is_known_counts_once_claimed() {
        let slots = Slots::new(3, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mut s1 = slots.take_edge().unwrap();
        let mut s2 = slots.take_edge().unwrap();
        assert_eq!(slots.clients(), 0);
        slots.claim(&mut s1, a).unwrap();
        slots.claim(&mut s1, a).unwrap();
        assert_eq!(slots.claim(&mut s2, a).unwrap_err(), Full::Client);
        // The unclaimed slot still counts in all.
        let _s3 = slots.take_edge().unwrap();
        assert_eq!(slots.take_edge().unwrap_err(), Full::Edge);
        drop((s1, s2));
        assert_eq!(slots.clients(), 0);
        assert!(slots.take(a).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let slots = Slots::new(100, 1);
        let _one = slots.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            slots
                .take("2001:db8:1:2:ffff::9".parse().unwrap())
                .unwrap_err(),
            Full::Client
        );
        assert!(slots.take("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }
}
