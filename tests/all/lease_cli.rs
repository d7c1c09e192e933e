//! Leases, renewal and forced unlocks through the CLI: `--ttl`, `renew`,
//! `--wait`, `--force`, and `hasp lock RES -- CMD`.

#[allow(unused_imports)]
use crate::support::*;
