//! Caps on open connections: a global count (the accept loop waits for a free slot before it
//! accepts, so excess connections queue in the kernel instead of spending file descriptors)
//! and a count per source address (over it, a new connection is closed at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connection caps shared by every listener.
#[derive(Debug)]
pub struct ConnectionCaps {
    global: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_max: usize,
}

/// One open connection's slot in both counts; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    source: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut map = self
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

impl ConnectionCaps {
    /// At most `max` connections, `per_ip_max` from one source (0: no per-source cap).
    #[must_use]
    pub fn new(max: usize, per_ip_max: usize) -> ConnectionCaps {
        ConnectionCaps {
            global: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            per_ip_max,
        }
    }

    /// Waits for a free global slot (call before accepting); None only if the caps were
    /// closed, which nothing does.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.global.clone().acquire_owned().await.ok()
    }

    /// Counts a connection from `source` into its slot; None when the source is at its cap.
    #[must_use]
    pub fn admit(&self, slot: OwnedSemaphorePermit, source: IpAddr) -> Option<ConnectionPermit> {
        let source = super::source_key(source);
        let mut map = self
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(source).or_insert(0);
        if self.per_ip_max != 0 && *n >= self.per_ip_max {
            if *n == 0 {
                map.remove(&source);
            }
            return None;
        }
        *n += 1;
        drop(map);
        Some(ConnectionPermit {
            _global: slot,
            source,
            per_ip: self.per_ip.clone(),
        })
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_at_its_cap_is_refused_until_one_of_its_connections_closes() {
        let caps = ConnectionCaps::new(10, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let one = caps.admit(caps.slot().await.unwrap(), a).unwrap();
        let _two = caps.admit(caps.slot().await.unwrap(), a).unwrap();
        assert!(caps.admit(caps.slot().await.unwrap(), a).is_none());
        assert!(
            caps.admit(caps.slot().await.unwrap(), "192.0.2.2".parse().unwrap())
                .is_some()
        );
        drop(one);
        assert!(caps.admit(caps.slot().await.unwrap(), a).is_some());
    }

    #[tokio::test]
    async fn the_global_cap_makes_the_next_accept_wait() {
        let caps = ConnectionCaps::new(1, 0);
        let held = caps.admit(caps.slot().await.unwrap(), "192.0.2.1".parse().unwrap());
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), caps.slot());
        assert!(waiting.await.is_err(), "a second slot was handed out");
        drop(held);
        let _slot = caps.slot().await;
    }
}
