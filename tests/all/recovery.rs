//! What a process killed in the middle of a lock leaves behind, and how the
//! next hasp process deals with it. The states are written by hand, exactly
//! as a killed process leaves them (docs/FORMAT.md, "What a record in a slot
//! is worth"), so no test depends on when a kill lands.

use crate::support::Locks;
use std::fs;
use std::path::{Path, PathBuf};

const GHOST: &str = "00000000-0000-4000-8000-00000000dead";

/// Writes a committed record for `resource` into its slot, as a locker does
/// at its commit step, without touching the fencing mark.
fn plant_record(
    locks: &Locks,
    resource: &str,
    fencing: u64,
    since_ms: u64,
    parents: bool,
) -> PathBuf {
    let slot = locks.path().join("nodes").join(resource).join(".slot");
    fs::create_dir_all(&slot).expect("slot dir");
    let record = slot.join(GHOST);
    let text = format!(
        "hasp-lock 1\nresource: {resource}\nclient: ghost\ntoken: {GHOST}\nfencing: {fencing}\n\
         since-ms: {since_ms}\nlock-parents: {parents}\nlock-children: true\n"
    );
    fs::write(&record, text).expect("write record");
    record
}

fn fencing_of(locks: &Locks, args: &[&str]) -> u64 {
    locks.json(args)["fencing"].as_u64().expect("fencing")
}

fn slot_entries(locks: &Locks, resource: &str) -> Vec<String> {
    let slot = locks.path().join("nodes").join(resource).join(".slot");
    // A missing slot is an empty one (docs/FORMAT.md).
    let Ok(entries) = fs::read_dir(slot) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn far_future_ms() -> u64 {
    // Younger than any limit, whatever the clock says: deterministic.
    u64::MAX / 2
}

#[test]
fn attempt_killed_before_its_claim_blocks_only_until_the_pending_limit() {
    let locks = Locks::new();
    assert_eq!(
        fencing_of(&locks, &["lock", "job", "--client", "a", "--json"]),
        1
    );
    locks.ok(&["unlock", "job", "--client", "a"]);
    // A locker read mark 1, committed fencing 2 and was killed (long ago).
    plant_record(&locks, "job", 2, 0, true);

    let fencing = fencing_of(&locks, &["lock", "job", "--client", "b", "--json"]);
    assert!(
        fencing > 2,
        "number 2 went to the dead attempt: got {fencing}"
    );
    let held = locks.json(&["status", "job", "--json"]);
    assert_eq!(held["client"], "b");
    assert_eq!(
        slot_entries(&locks, "job").len(),
        1,
        "the dead record is gone"
    );
}

#[test]
fn attempt_still_in_flight_counts_as_held_but_is_not_yet_locked() {
    let locks = Locks::new();
    locks.ok(&["lock", "job", "--client", "a"]);
    locks.ok(&["unlock", "job", "--client", "a"]);
    plant_record(&locks, "job", 2, far_future_ms(), true);

    locks
        .run(&["lock", "job", "--client", "b"])
        .assert_refused(1, "Resource already locked by 'ghost'");
    locks
        .run(&["lock", "job/part", "--client", "b"])
        .assert_refused(1, "Resource already locked by 'ghost'");
    // Not granted yet: nothing to unlock, nothing to show.
    locks
        .run(&["unlock", "job", "--client", "ghost"])
        .assert_refused(1, "Resource not locked");
    assert_eq!(
        locks.json(&["status", "job", "--json"]),
        serde_json::Value::Null
    );
    assert_eq!(slot_entries(&locks, "job"), vec![GHOST.to_string()]);
}

#[test]
fn record_whose_number_went_to_another_grant_is_cleared_at_once() {
    let locks = Locks::new();
    locks.ok(&["lock", "job", "--client", "a"]);
    locks.ok(&["unlock", "job", "--client", "a"]);
    // Fencing 1 was claimed by a's grant: this record can never be granted.
    plant_record(&locks, "job", 1, far_future_ms(), true);

    assert_eq!(
        fencing_of(&locks, &["lock", "job", "--client", "b", "--json"]),
        2
    );
}

#[test]
fn stale_child_attempt_with_its_marker_stops_blocking_the_parent() {
    let locks = Locks::new();
    locks.ok(&["lock", "app/db", "--client", "a"]);
    locks.ok(&["unlock", "app/db", "--client", "a"]);
    let record = plant_record(&locks, "app/db", 2, 0, true);
    let marker_dir = locks.path().join("nodes/app/.ix");
    fs::create_dir_all(&marker_dir).expect("ix dir");
    fs::hard_link(&record, marker_dir.join(GHOST)).expect("marker");

    locks.ok(&["lock", "app", "--client", "b"]);
    assert!(
        !Path::new(&marker_dir.join(GHOST)).exists(),
        "marker removed"
    );
    assert!(slot_entries(&locks, "app/db").is_empty(), "record removed");
}

#[test]
fn granted_lock_of_a_killed_holder_stays_until_unlocked() {
    let locks = Locks::new();
    // The grant completed; its process is gone (every CLI call is one).
    locks.ok(&["lock", "job", "--client", "a"]);
    locks
        .run(&["lock", "job", "--client", "b"])
        .assert_refused(1, "Resource already locked by 'a'");
    locks.ok(&["unlock", "job", "--client", "a"]);
    locks.ok(&["lock", "job", "--client", "b"]);
}
