//! Staying up under load and attack (SPEC §11 `[limits]`): token-bucket rate limits per
//! source address, per verified subject and global, for each class of call ([`rate`]); caps on
//! open connections, globally and per source address ([`conn`]); and the timeouts the accept
//! loop applies. Source addresses always come from the TCP peer, never from a header.

pub mod conn;
pub mod rate;
pub mod upkeep;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::config::LimitsConfig;

pub use conn::{ConnectionCaps, ConnectionPermit};
pub use rate::{Class, Limited, RateLimits};

/// Everything `[limits]` configures, built once and shared by every listener.
#[derive(Debug)]
pub struct Limits {
    /// Request rates.
    pub rates: RateLimits,
    /// Connection caps.
    pub connections: ConnectionCaps,
    /// Timeouts of the accept loop.
    pub timeouts: Timeouts,
    /// Connections the accept loop closed on its own (a metric).
    pub closed: crate::metrics::ConnectionCounter,
}

/// The accept loop's timeouts and HTTP/2 settings.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TLS handshake.
    pub handshake: Duration,
    /// From the handshake to a request's first byte.
    pub first_byte: Duration,
    /// A request's headers (HTTP/1.1).
    pub header: Duration,
    /// No request in flight and nothing received.
    pub idle: Duration,
    /// One request, body included.
    pub request: Duration,
    /// HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// HTTP/2 ping interval.
    pub http2_ping_interval: Duration,
    /// HTTP/2 ping answer deadline.
    pub http2_ping_timeout: Duration,
}

impl Limits {
    /// The limits of `config`, counting the connections they close into `closed`.
    #[must_use]
    pub fn new(config: &LimitsConfig, closed: crate::metrics::ConnectionCounter) -> Limits {
        Limits {
            closed,
            rates: RateLimits::new(config),
            connections: ConnectionCaps::new(config.max_connections, config.max_connections_per_ip),
            timeouts: Timeouts {
                handshake: config.handshake_timeout,
                first_byte: config.first_byte_timeout,
                header: config.header_timeout,
                idle: config.idle_timeout,
                request: config.request_timeout,
                http2_max_streams: config.http2_max_concurrent_streams,
                http2_ping_interval: config.http2_keep_alive_interval,
                http2_ping_timeout: config.http2_keep_alive_timeout,
            },
        }
    }
}

/// The address a source is counted under: IPv4 as is (also when written as an IPv4-mapped
/// IPv6 address), IPv6 by its /64 prefix — one host usually holds a whole /64, so counting
/// single IPv6 addresses would let one host be a billion sources.
#[must_use]
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
