//! Token-bucket rate limits (the `governor` crate): for each class of call, one bucket per
//! source address, one per verified subject and one for everyone. A refused call learns how
//! long to wait (`Retry-After`). Keyed buckets that are full again are dropped by
//! [`RateLimits::retain_recent`], which the broker runs every few seconds, so the memory
//! they hold is bounded by the callers of the last few seconds.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{LimitsConfig, Rate};

/// A class of calls with its own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Token exchanges (native, RFC 8693, Vault-compatible login).
    Exchange,
    /// Secret reads with a broker token.
    Read,
    /// Admin API calls.
    Admin,
}

impl Class {
    /// Its name in audit records and metrics.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Class::Exchange => "exchange",
            Class::Read => "secret_read",
            Class::Admin => "admin_call",
        }
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The source address's.
    Source,
    /// The verified subject's.
    Subject,
    /// Everyone's.
    Global,
}

impl Scope {
    /// Its name in audit records and metrics.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scope::Source => "per_ip",
            Scope::Subject => "per_subject",
            Scope::Global => "global",
        }
    }
}

/// A call over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The class of the call.
    pub class: Class,
    /// The limit that refused it.
    pub scope: Scope,
    /// When to try again, in whole seconds (at least 1).
    pub retry_after_secs: u64,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many {} requests ({} limit); retry in {} s",
            self.class.name(),
            self.scope.name(),
            self.retry_after_secs
        )
    }
}

#[derive(Debug)]
struct ClassLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_subject: Option<DefaultKeyedRateLimiter<u64>>,
    global: Option<DefaultDirectRateLimiter>,
}

fn quota(rate: Rate) -> Option<Quota> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = rate
        .burst
        .and_then(NonZeroU32::new)
        .unwrap_or(per_second)
        .max(per_second);
    Some(Quota::per_second(per_second).allow_burst(burst))
}

impl ClassLimits {
    fn new(per_ip: Rate, per_subject: Rate, global: Rate) -> ClassLimits {
        ClassLimits {
            per_ip: quota(per_ip).map(RateLimiter::keyed),
            per_subject: quota(per_subject).map(RateLimiter::keyed),
            global: quota(global).map(RateLimiter::direct),
        }
    }
}

/// The rate limits of every class.
#[derive(Debug)]
pub struct RateLimits {
    exchange: ClassLimits,
    read: ClassLimits,
    admin: ClassLimits,
    /// Refusals of identified callers written on their own line, per caller (beyond it they
    /// are counted into the aggregate records).
    records: DefaultKeyedRateLimiter<u64>,
    /// Subjects are kept as keyed 64-bit hashes (bounded size, not guessable from memory).
    hasher: RandomState,
    clock: DefaultClock,
}

/// Refusals of one identified caller written on their own line per second, sustained.
pub const RECORDS_PER_SECOND: NonZeroU32 = NonZeroU32::MIN.saturating_add(0);
/// ... and at once.
pub const RECORDS_BURST: NonZeroU32 = NonZeroU32::MIN.saturating_add(19);

fn wait_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl RateLimits {
    /// The limits `config` sets.
    #[must_use]
    pub fn new(config: &LimitsConfig) -> RateLimits {
        RateLimits {
            exchange: ClassLimits::new(
                config.exchange_per_ip,
                config.exchange_per_subject,
                config.exchange_global,
            ),
            read: ClassLimits::new(
                config.read_per_ip,
                config.read_per_subject,
                config.read_global,
            ),
            admin: ClassLimits::new(
                config.admin_per_ip,
                config.admin_per_subject,
                config.admin_global,
            ),
            records: RateLimiter::keyed(
                Quota::per_second(RECORDS_PER_SECOND).allow_burst(RECORDS_BURST),
            ),
            hasher: RandomState::new(),
            clock: DefaultClock::default(),
        }
    }

    /// Whether a refusal of the identified caller `key` (a token subject, a lease) is written
    /// on its own line: up to [`RECORDS_BURST`] at once and [`RECORDS_PER_SECOND`] a second
    /// per caller; beyond that the caller's refusals are counted into the aggregate records,
    /// so that even a caller with a valid identity cannot buy audit lines without bound.
    pub fn own_record(&self, key: impl Hash) -> bool {
        self.records.check_key(&self.hasher.hash_one(key)).is_ok()
    }

    fn class(&self, class: Class) -> &ClassLimits {
        match class {
            Class::Exchange => &self.exchange,
            Class::Read => &self.read,
            Class::Admin => &self.admin,
        }
    }

    /// A call of `class` from `source`: its source's bucket first (so one noisy source does
    /// not spend everyone's), then the global one.
    ///
    /// # Errors
    /// [`Limited`] when a bucket is empty.
    pub fn check_source(&self, class: Class, source: IpAddr) -> Result<(), Limited> {
        let limits = self.class(class);
        if let Some(l) = &limits.per_ip {
            l.check_key(&super::source_key(source))
                .map_err(|n| self.limited(class, Scope::Source, &n))?;
        }
        if let Some(l) = &limits.global {
            l.check()
                .map_err(|n| self.limited(class, Scope::Global, &n))?;
        }
        Ok(())
    }

    /// A call of `class` by the verified `subject`.
    ///
    /// # Errors
    /// [`Limited`] when the subject's bucket is empty.
    /// The subject is anything hashable: a name, or an (issuer, subject) pair hashed as a
    /// tuple (each part length-delimited, so no two pairs share a key and nothing is
    /// allocated on the exchange path).
    pub fn check_subject(&self, class: Class, subject: impl Hash) -> Result<(), Limited> {
        if let Some(l) = &self.class(class).per_subject {
            l.check_key(&self.hasher.hash_one(subject))
                .map_err(|n| self.limited(class, Scope::Subject, &n))?;
        }
        Ok(())
    }

    fn limited(
        &self,
        class: Class,
        scope: Scope,
        not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>,
    ) -> Limited {
        Limited {
            class,
            scope,
            retry_after_secs: wait_secs(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Drops the buckets that are full again (their callers have been quiet long enough);
    /// returns how many keyed buckets remain.
    pub fn retain_recent(&self) -> usize {
        self.records.retain_recent();
        self.records.shrink_to_fit();
        let mut left = self.records.len();
        for c in [&self.exchange, &self.read, &self.admin] {
            if let Some(l) = &c.per_ip {
                l.retain_recent();
                l.shrink_to_fit();
                left += l.len();
            }
            if let Some(l) = &c.per_subject {
                l.retain_recent();
                l.shrink_to_fit();
                left += l.len();
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: Rate, per_subject: Rate, global: Rate) -> RateLimits {
        let config = LimitsConfig {
            exchange_per_ip: per_ip,
            exchange_per_subject: per_subject,
            exchange_global: global,
            ..LimitsConfig::default()
        };
        RateLimits::new(&config)
    }

    const OFF: Rate = Rate {
        per_second: 0,
        burst: None,
    };

    #[test]
    fn a_source_over_its_burst_is_refused_with_a_wait_and_others_are_not() {
        let l = limits(
            Rate {
                per_second: 1,
                burst: Some(3),
            },
            OFF,
            OFF,
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            l.check_source(Class::Exchange, a).unwrap();
        }
        let refused = l.check_source(Class::Exchange, a).unwrap_err();
        assert_eq!(refused.scope, Scope::Source);
        assert_eq!(refused.retry_after_secs, 1);
        l.check_source(Class::Exchange, b).unwrap();
        // Other classes have their own buckets.
        l.check_source(Class::Read, a).unwrap();
    }

    #[test]
    fn the_global_bucket_is_shared_and_subjects_are_counted_apart() {
        let l = limits(
            OFF,
            Rate {
                per_second: 1,
                burst: Some(1),
            },
            Rate {
                per_second: 1,
                burst: Some(2),
            },
        );
        l.check_source(Class::Exchange, "192.0.2.1".parse().unwrap())
            .unwrap();
        l.check_source(Class::Exchange, "192.0.2.2".parse().unwrap())
            .unwrap();
        let refused = l
            .check_source(Class::Exchange, "192.0.2.3".parse().unwrap())
            .unwrap_err();
        assert_eq!(refused.scope, Scope::Global);
        l.check_subject(Class::Exchange, "repo:a").unwrap();
        assert_eq!(
            l.check_subject(Class::Exchange, "repo:a")
                .unwrap_err()
                .scope,
            Scope::Subject
        );
        l.check_subject(Class::Exchange, "repo:b").unwrap();
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        let l = limits(OFF, OFF, OFF);
        for _ in 0..10_000 {
            l.check_source(Class::Exchange, "192.0.2.1".parse().unwrap())
                .unwrap();
        }
    }

    #[test]
    fn quiet_sources_are_forgotten() {
        let l = limits(
            Rate {
                per_second: 1_000_000,
                burst: Some(1),
            },
            OFF,
            OFF,
        );
        for i in 0..100u8 {
            l.check_source(Class::Exchange, IpAddr::from([10, 0, 0, i]))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.retain_recent(), 0);
    }
}
