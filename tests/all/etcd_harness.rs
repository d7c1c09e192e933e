//! The etcd harness itself (tests/etcd.rs), on real etcd servers: one
//! member, stopped and started again; a three-member cluster losing and
//! regaining its leader; clusters started side by side; a start on a port
//! that is taken, and one that fails.

use std::net::TcpListener;
use std::process::Output;

use crate::etcd::Etcd;

/// Runs `etcdctl ARGS...` and returns its stdout; panics unless it
/// succeeded.
#[track_caller]
fn ctl(mut cmd: std::process::Command, args: &[&str]) -> String {
    let out: Output = cmd.args(args).output().expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `etcdctl get KEY --print-value-only`: the value, or "" if there is none.
fn value(cmd: std::process::Command, key: &str) -> String {
    ctl(cmd, &["get", key, "--print-value-only"])
        .trim_end()
        .to_string()
}

#[test]
fn single_member_stores_and_answers() {
    let etcd = Etcd::single();
    assert_eq!(etcd.len(), 1);
    assert_eq!(etcd.running(), [0]);
    assert_eq!(ctl(etcd.etcdctl(), &["put", "k", "v"]).trim(), "OK");
    assert_eq!(value(etcd.etcdctl(), "k"), "v");
    assert_eq!(etcd.leader(), 0);

    let endpoint = etcd.endpoint(0);
    assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
    assert_eq!(etcd.endpoints(), std::slice::from_ref(&endpoint));
    assert_eq!(etcd.url(""), format!("etcd://{endpoint}"));
    assert_eq!(etcd.url("team-a"), format!("etcd://{endpoint}/team-a"));

    // Dropping it kills and reaps the server and removes its directory.
    let pid = etcd.pid(0).expect("running");
    let dir = etcd.dir().to_path_buf();
    assert!(dir.join("m0/data/member").is_dir());
    drop(etcd);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn a_stopped_member_restarts_with_its_data() {
    let mut etcd = Etcd::single();
    assert_eq!(ctl(etcd.etcdctl(), &["put", "k", "kept"]).trim(), "OK");
    let pid = etcd.pid(0).expect("running");
    etcd.stop();
    assert!(etcd.running().is_empty());
    assert_eq!(etcd.pid(0), None);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    etcd.restart_all();
    assert_eq!(etcd.running(), [0]);
    assert_eq!(value(etcd.etcdctl(), "k"), "kept");
}

#[test]
fn cluster_survives_kill_9_of_its_leader_and_takes_it_back() {
    let mut etcd = Etcd::cluster(3);
    assert_eq!(etcd.running(), [0, 1, 2]);
    let hosts: Vec<String> = etcd.endpoints();
    assert_eq!(etcd.url("p"), format!("etcd://{}/p", hosts.join(",")));
    assert_eq!(ctl(etcd.etcdctl(), &["put", "before", "1"]).trim(), "OK");

    let old = etcd.leader();
    etcd.kill(old);
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    assert_eq!(etcd.running(), others);
    let new = etcd.wait_for_leader();
    assert!(others.contains(&new), "leader {new}, killed {old}");

    // Two of three still make a quorum: writes and linearizable reads work,
    // through every endpoint (the client skips the dead one) and through
    // each live member alone.
    assert_eq!(ctl(etcd.etcdctl(), &["put", "during", "2"]).trim(), "OK");
    for &i in &others {
        assert_eq!(value(etcd.etcdctl_on(&[i]), "before"), "1");
        assert_eq!(value(etcd.etcdctl_on(&[i]), "during"), "2");
    }

    // Back with its data dir and ports: healthy, and it has caught up.
    etcd.restart(old);
    assert_eq!(etcd.running(), [0, 1, 2]);
    assert_eq!(value(etcd.etcdctl_on(&[old]), "during"), "2");
    assert!(etcd.leader() < 3);
    let health = etcd
        .etcdctl()
        .args(["endpoint", "health"])
        .output()
        .expect("run etcdctl");
    let said = String::from_utf8_lossy(&health.stdout) + String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success(), "{said}");
    assert_eq!(said.matches("is healthy").count(), 3, "{said}");
}

#[test]
fn clusters_started_side_by_side_share_nothing() {
    let starts: Vec<std::thread::JoinHandle<Etcd>> = (0..2)
        .map(|_| std::thread::spawn(|| Etcd::cluster(3)))
        .collect();
    let clusters: Vec<Etcd> = starts
        .into_iter()
        .map(|t| t.join().expect("start a cluster"))
        .collect();
    let mut ports = Vec::new();
    for etcd in &clusters {
        for i in 0..etcd.len() {
            ports.push(etcd.endpoint(i));
            ports.push(format!("127.0.0.1:{}", etcd.peer_port(i)));
        }
    }
    let mut distinct = ports.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ports.len(), "ports used twice: {ports:?}");

    // Two clusters, not one: a key put in one is not in the other.
    assert_eq!(ctl(clusters[0].etcdctl(), &["put", "k", "a"]).trim(), "OK");
    assert_eq!(value(clusters[0].etcdctl(), "k"), "a");
    assert_eq!(value(clusters[1].etcdctl(), "k"), "");
}

#[test]
fn a_taken_port_means_a_fresh_start_elsewhere() {
    // Hold a port, and make it the first attempt's client port: etcd exits
    // with "address already in use", and the harness starts again on free
    // ports.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let spare = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = spare.local_addr().expect("addr").port();
    drop(spare);
    let etcd = Etcd::start_with_ports(1, &[], Some(&[(port, peer)]));
    assert_eq!(etcd.attempts(), 2);
    assert_ne!(etcd.endpoint(0), format!("127.0.0.1:{port}"));
    assert_eq!(ctl(etcd.etcdctl(), &["put", "k", "v"]).trim(), "OK");
    drop(taken);
}

#[test]
#[should_panic(expected = "flag provided but not defined: -no-such-flag")]
fn a_member_that_cannot_start_is_reported_with_what_it_said() {
    Etcd::start(1, &["--no-such-flag"]);
}
