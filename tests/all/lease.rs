//! Leases through the Rust API, the stock `wasmtime` CLI and plugins: expiry,
//! take-over, renewal, `lease-expired`, request ids, forced unlocks, and a
//! format 2 directory upgraded in place.

#[allow(unused_imports)]
use crate::support::*;
