//! Several processes on one store: the helper binaries `store-worker` and `refresh-worker`
//! contending for the lock, crashing while holding it, timing out, tearing reads and racing a
//! refresh.

mod refresh_race;
mod refresh_workers;
mod store_contention;
mod store_crash;
mod store_lock_timeout;
mod store_torn_reads;
