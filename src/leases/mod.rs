//! The life of a lease after its exchange: the operators' listing (`list`), revocation by
//! selector (`revoke`), the teardown of
//! the external credentials it holds — database roles dropped by a worker, with retries —
//! (`teardown`), and the sweeper that marks expired leases for teardown and deletes them once
//! settled (`sweeper`).

pub mod list;
pub mod revoke;
pub mod sweeper;
pub mod teardown;
