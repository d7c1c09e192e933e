//! Many `hasp` processes racing on related resources: never two grants that
//! conflict, losers told who holds it, and the disk agreeing with the winners.
//!
//! Every racer is started behind a gate: `sh` prints one byte, then blocks
//! reading stdin, then execs `hasp`. Once every racer has printed its byte
//! (all are running and waiting), a newline is written to each, releasing
//! them together.

use crate::support::{hasp_bin, Locks, Run};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

/// Starts `hasp --dir <locks> ARGS...` held at the gate.
fn gated(locks: &Locks, args: &[String]) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(r#"printf r; read -r _ && exec "$0" "$@""#)
        .arg(hasp_bin())
        .arg("--dir")
        .arg(locks.path())
        .args(args)
        .env_remove("HASP_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

/// Runs every command at the same moment; returns their results in order.
fn race(locks: &Locks, commands: &[Vec<String>]) -> Vec<Run> {
    let mut children: Vec<Child> = commands.iter().map(|args| gated(locks, args)).collect();
    for child in &mut children {
        let mut ready = [0u8];
        let stdout = child.stdout.as_mut().expect("piped stdout");
        stdout.read_exact(&mut ready).expect("racer ready");
        assert_eq!(&ready, b"r");
    }
    for child in &mut children {
        let mut gate = child.stdin.take().expect("piped stdin");
        gate.write_all(b"\n").expect("open the gate");
    }
    children
        .into_iter()
        .map(|child| Run::from(child.wait_with_output().expect("wait for racer")))
        .collect()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Whether `run` is a proper refusal: exit 1 with the exact "already locked"
/// message naming one of `holders`, or the busy message for `resource`.
fn proper_refusal(run: &Run, resource: &str, holders: &[&str]) -> bool {
    let busy = format!("gave up on {resource} after repeated concurrent changes; try again\n");
    run.code == 1
        && run.stdout.is_empty()
        && (run.stderr == busy
            || holders
                .iter()
                .any(|h| run.stderr == format!("Resource already locked by '{h}'\n")))
}

/// Every held lock, as (resource, client) pairs, grouped by first segment.
fn held_by_root(locks: &Locks) -> BTreeMap<String, Vec<(String, String)>> {
    let all = locks.json(&["status", "--json"]);
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for holder in all.as_array().expect("a JSON array") {
        let resource = holder["resource"].as_str().expect("a resource").to_string();
        let client = holder["client"].as_str().unwrap_or("?").to_string();
        let root = resource.split('/').next().expect("a segment").to_string();
        out.entry(root).or_default().push((resource, client));
    }
    out
}

#[test]
fn racing_related_locks_grant_at_most_one_per_round() {
    const ROUNDS: usize = 250;
    let locks = Locks::new();
    // (resource as typed, canonical resource, client); every pair conflicts.
    let racers = |n: usize| -> Vec<(String, String, String)> {
        let r = format!("r{n}");
        [
            (r.clone(), r.clone(), "a1"),
            (format!("/{r}"), r.clone(), "a2"),
            (format!("{r}/a"), format!("{r}/a"), "b1"),
            (format!("{r}/a/"), format!("{r}/a"), "b2"),
            (format!("{r}/a/b"), format!("{r}/a/b"), "c"),
            (format!("{r}/a/b/c"), format!("{r}/a/b/c"), "d"),
        ]
        .into_iter()
        .map(|(typed, canonical, client)| (typed, canonical, client.to_string()))
        .collect()
    };
    let clients = ["a1", "a2", "b1", "b2", "c", "d"];

    let mut winners: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for n in 0..ROUNDS {
        let round = racers(n);
        let commands: Vec<Vec<String>> = round
            .iter()
            .map(|(typed, _, client)| args(&["lock", typed, "--client", client]))
            .collect();
        let runs = race(&locks, &commands);
        let mut won = Vec::new();
        for ((_, canonical, client), run) in round.iter().zip(&runs) {
            if run.code == 0 && run.stdout.is_empty() && run.stderr.is_empty() {
                won.push((canonical.clone(), client.clone()));
            } else if !proper_refusal(run, canonical, &clients) {
                problems.push(format!("round {n}: {client} on {canonical}: {run:?}"));
            }
        }
        if won.len() > 1 {
            problems.push(format!("round {n}: conflicting grants {won:?}"));
        }
        if let Some(w) = won.pop() {
            winners.insert(format!("r{n}"), w);
        }
    }

    // The disk agrees: exactly the winner of each round is held.
    let held = held_by_root(&locks);
    for n in 0..ROUNDS {
        let root = format!("r{n}");
        let on_disk = held.get(&root).cloned().unwrap_or_default();
        let expected: Vec<(String, String)> = winners.get(&root).cloned().into_iter().collect();
        if on_disk != expected {
            problems.push(format!(
                "round {n}: held on disk {on_disk:?}, granted {expected:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems in {ROUNDS} rounds, e.g.:\n{}",
        problems.len(),
        problems
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        winners.len() > ROUNDS / 2,
        "only {} of {ROUNDS} rounds granted anything",
        winners.len()
    );
}

#[test]
fn racing_siblings_and_a_parent_without_lock_children_all_win() {
    const ROUNDS: usize = 20;
    let locks = Locks::new();
    for n in 0..ROUNDS {
        let s = format!("s{n}");
        let expected: Vec<(String, String)> = [
            (s.clone(), "parent"),
            (format!("{s}/a"), "a"),
            (format!("{s}/b"), "b"),
            (format!("{s}/c"), "c"),
            (format!("{s}/d/e"), "e"),
        ]
        .into_iter()
        .map(|(r, c)| (r, c.to_string()))
        .collect();
        let commands: Vec<Vec<String>> = expected
            .iter()
            .map(|(r, c)| {
                let mut a = args(&["lock", r, "--client", c]);
                if c == "parent" {
                    a.push("--no-lock-children".into());
                }
                a
            })
            .collect();
        for ((r, c), run) in expected.iter().zip(race(&locks, &commands)) {
            assert_eq!(
                (run.code, run.stderr.as_str()),
                (0, ""),
                "round {n}: {c} on {r}: {run:?}"
            );
        }
        let held = held_by_root(&locks);
        assert_eq!(held.get(&s), Some(&expected), "round {n}");
    }
}

#[test]
fn fencing_only_grows_while_lockers_race() {
    const ROUNDS: usize = 40;
    let locks = Locks::new();
    let clients = ["w1", "w2", "w3", "w4", "w5"];
    let mut fencings = Vec::new();
    for n in 0..ROUNDS {
        let commands: Vec<Vec<String>> = clients
            .iter()
            .map(|c| args(&["lock", "f", "--client", c, "--json"]))
            .collect();
        let runs = race(&locks, &commands);
        let mut won = Vec::new();
        for (client, run) in clients.iter().zip(&runs) {
            if run.code == 0 {
                let grant: Value = serde_json::from_str(&run.stdout).expect("grant JSON");
                assert_eq!(grant["client"], *client, "round {n}: {grant}");
                won.push(grant);
            } else {
                assert!(
                    proper_refusal(run, "f", &clients),
                    "round {n}: {client}: {run:?}"
                );
            }
        }
        // Racers on one free resource: exactly one of them gets it.
        assert_eq!(won.len(), 1, "round {n}: {won:?}");
        let grant = won.pop().expect("one grant");
        let fencing = grant["fencing"].as_u64().expect("fencing");
        let held = locks.json(&["status", "f", "--json"]);
        assert_eq!(
            (&held["client"], held["fencing"].as_u64()),
            (&grant["client"], Some(fencing)),
            "round {n}: {held}"
        );
        fencings.push(fencing);
        let token = grant["token"].as_str().expect("token");
        locks.ok(&["unlock", "f", "--token", token]);
    }
    assert!(
        fencings.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase: {fencings:?}"
    );
}
