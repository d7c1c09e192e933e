//! `hasp:lock/store`: where a registry keeps its locks when that is not a
//! lock directory. The host implements the interface on etcd (`etcd`); the
//! registry component built for it (world `on-store`) runs the same rules
//! on it. This module holds what the rest of the host sees: the store a
//! user names ([`Store`]), and what one guest instance keeps of it while it
//! runs ([`Session`]): the connection, and what its last call read, so a
//! waiting lock can watch exactly that.

mod etcd;

pub(crate) use etcd::{Etcd, Watch};

use crate::error::Error;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a registry keeps its locks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// A lock directory (the default; docs/FORMAT.md).
    Dir(PathBuf),
    /// Keys under a prefix on an etcd cluster.
    Etcd(EtcdUrl),
}

impl Store {
    /// The store `spec` names: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`,
    /// or a lock directory's path.
    pub fn parse(spec: &str) -> Result<Store, Error> {
        if spec.contains("://") {
            return EtcdUrl::parse(spec).map(Store::Etcd);
        }
        if spec.is_empty() {
            return Err(Error::InvalidInput {
                message: "invalid store '': name a lock directory or etcd://HOST:PORT".into(),
            });
        }
        Ok(Store::Dir(PathBuf::from(spec)))
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Dir(dir) => write!(f, "{}", dir.display()),
            Store::Etcd(url) => url.fmt(f),
        }
    }
}

/// An etcd cluster and the key prefix a registry lives under:
/// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`. Registries under different
/// prefixes on one cluster are independent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `HOST:PORT` of each member asked (any subset of the cluster).
    pub endpoints: Vec<String>,
    /// The key prefix, without leading or trailing `/`: every key of the
    /// registry begins with it and a `/`. `hasp` when the URL names none.
    pub prefix: String,
}

/// The most members a URL names: etcd-client takes at most 64, and a
/// cluster has a handful.
const MOST_ENDPOINTS: usize = 32;

/// The prefix of a URL that names none.
const DEFAULT_PREFIX: &str = "hasp";

impl EtcdUrl {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    pub fn parse(url: &str) -> Result<EtcdUrl, Error> {
        let bad = |why: &str| Error::InvalidInput {
            message: format!("invalid store {url:?}: {why}"),
        };
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            bad("the only store URLs are etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
        })?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut endpoints = Vec::new();
        if hosts.split(',').count() > MOST_ENDPOINTS {
            return Err(bad(&format!(
                "name at most {MOST_ENDPOINTS} members (any of a cluster's will do)"
            )));
        }
        for endpoint in hosts.split(',') {
            let (host, port) = endpoint
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("'{endpoint}' is not HOST:PORT")))?;
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
            let port_ok =
                !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
            if !host_ok || !port_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(&format!("'{endpoint}' is not HOST:PORT")));
            }
            endpoints.push(endpoint.to_string());
        }
        let prefix = prefix.trim_matches('/');
        // A segment `nodes` would put the registry inside another's nodes
        // (`team/nodes/x` under `team`).
        if prefix.split('/').any(|s| s == "nodes") {
            return Err(bad(
                "no segment of the prefix may be 'nodes': its keys would be another \
                 registry's nodes",
            ));
        }
        if prefix.len() > 256
            || prefix.split('/').any(|s| s == "." || s == "..")
            || prefix.contains("//")
            || prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '%')
        {
            return Err(bad(
                "the prefix is at most 256 bytes of /-separated names, without spaces, \
                 control characters, '%' or empty, '.' and '..' segments",
            ));
        }
        Ok(EtcdUrl {
            endpoints,
            prefix: if prefix.is_empty() {
                DEFAULT_PREFIX.to_string()
            } else {
                prefix.to_string()
            },
        })
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}/{}", self.endpoints.join(","), self.prefix)
    }
}

/// What one guest instance on a store keeps: the connection, and what the
/// call running now (or last) read, for a waiter.
pub(crate) struct Session {
    pub(crate) etcd: Arc<Etcd>,
    /// The keys read so far in this call: the longest prefix they share
    /// (full keys, with the registry's prefix), and the earliest revision
    /// they were read at.
    read: Option<(String, i64)>,
    /// When something read changes by the clock alone (a lease ends), in
    /// milliseconds since the Unix epoch: the earliest the guest said.
    changes_at: Option<u64>,
    /// The revisions of this call's own writes (a commit, a withdrawal):
    /// a waiter is not woken by them.
    own: Vec<i64>,
}

impl Session {
    pub(crate) fn new(etcd: Arc<Etcd>) -> Session {
        Session {
            etcd,
            read: None,
            changes_at: None,
            own: Vec::new(),
        }
    }

    /// A call begins: nothing read yet.
    pub(crate) fn begin(&mut self) {
        self.read = None;
        self.changes_at = None;
        self.own.clear();
    }

    /// Notes that the call wrote at `revision`.
    fn wrote(&mut self, revision: i64) {
        self.own.push(revision);
    }

    /// Notes that the call read `key` (or every key under it) at
    /// `revision`.
    fn noted(&mut self, key: &str, revision: i64) {
        self.read = Some(match self.read.take() {
            None => (key.to_string(), revision),
            Some((prefix, at)) => {
                let common = common_prefix(&prefix, key);
                (prefix[..common].to_string(), at.min(revision))
            }
        });
    }

    /// What a waiter for a change to what the last call read watches.
    pub(crate) fn watch(&self) -> Option<Watch> {
        let (prefix, revision) = self.read.clone()?;
        Some(Watch {
            etcd: self.etcd.clone(),
            prefix,
            after: revision,
            changes_at: self.changes_at,
            own: self.own.clone(),
        })
    }
}

/// The length in bytes of the longest common prefix of `a` and `b`, on a
/// character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((at, _), _)| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_endpoints_and_a_prefix() {
        let url = EtcdUrl::parse("etcd://127.0.0.1:2379,localhost:22379/team/a").unwrap();
        assert_eq!(url.endpoints, ["127.0.0.1:2379", "localhost:22379"]);
        assert_eq!(url.prefix, "team/a");
        assert_eq!(
            url.to_string(),
            "etcd://127.0.0.1:2379,localhost:22379/team/a"
        );
        let url = EtcdUrl::parse("etcd://h:1").unwrap();
        assert_eq!(url.prefix, "hasp");
        let many = format!("etcd://h:1{}", ",h:2".repeat(MOST_ENDPOINTS));
        assert!(EtcdUrl::parse(&many).is_err());
        for bad in [
            "etcd://",
            "etcd://h",
            "etcd://h:0",
            "etcd://h:99999",
            "etcd://:1",
            "etcd://h:1,",
            "etcd://h:1/a//b",
            "etcd://h:1/a/../b",
            "etcd://h:1/a b",
            "etcd://h:+1",
            "etcd://h:01234567",
            "etcd://h:1/nodes",
            "etcd://h:1/team/nodes/x",
            "http://h:1",
        ] {
            assert!(EtcdUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_common_prefix_is_on_a_character_boundary() {
        assert_eq!(common_prefix("hasp/nodes/a", "hasp/nodes/ab"), 12);
        assert_eq!(common_prefix("x/é", "x/è"), 2);
        assert_eq!(common_prefix("", "a"), 0);
    }
}
