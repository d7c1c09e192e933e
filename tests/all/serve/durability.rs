//! What survives: acknowledged grants across SIGKILL and restart, node
//! directories removed under a running daemon, and `--fsync` (its grants,
//! and a failing sync seen through every door).

use super::{assert_error, held, sample, token, xmlrpc, Server};
use crate::support::{already, Locks, Tmpfs};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn acknowledged_grants_survive_sigkill_and_restart() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let (status, grant) =
        server.post_json("/v1/lock", &json!({"resource": "survivor", "client": "a"}));
    assert_eq!(status, 200, "{grant}");
    let (status, anonymous) = server.get_json("/canhaz/other");
    assert_eq!((status, &anonymous["ok"]), (200, &json!(true)));
    server.kill();

    let server = Server::start(&locks, &[]);
    let got = server.post_json("/v1/lock", &json!({"resource": "survivor", "client": "b"}));
    assert_error(&got, 409, "already-locked");
    assert_eq!(got.1["error"]["holder"], "a");
    assert_eq!(
        server.get_json("/dohaz/other"),
        (200, json!({"lockedBy": "?"}))
    );
    let shown = locks.json(&["status", "survivor", "--json"]);
    assert_eq!(
        (&shown["client"], &shown["fencing"]),
        (&json!("a"), &grant["fencing"])
    );
    // The tokens handed out before the crash still work.
    let nowant = format!("/nowant/other?token={}", token(&anonymous));
    assert_eq!(server.get_json(&nowant), (200, json!({"ok": true})));
    let (status, _) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "survivor", "token": token(&grant)}),
    );
    assert_eq!(status, 200);
    assert_eq!(held(&locks), Vec::<String>::new());
}

#[test]
fn node_directories_removed_under_a_running_daemon_are_made_again() {
    // One worker: the guest that holds `nodes/gone/x` open serves every call.
    let locks = Locks::new();
    let server = Server::start(&locks, &["--workers", "1"]);
    let (status, grant) =
        server.post_json("/v1/lock", &json!({"resource": "gone/x", "client": "a"}));
    assert_eq!(status, 200, "{grant}");
    let (status, _) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "gone/x", "token": token(&grant)}),
    );
    assert_eq!(status, 200);

    // An operator removes the nodes while the daemon runs.
    std::fs::remove_dir_all(locks.path().join("nodes/gone")).expect("remove nodes");
    let (status, again) =
        server.post_json("/v1/lock", &json!({"resource": "gone/x", "client": "b"}));
    assert_eq!(status, 200, "{again}");

    // The grant is in the directory everybody else reads, not a removed one.
    let since = again["since_ms"].as_u64().expect("since_ms");
    assert_eq!(
        locks.state_files("gone/x"),
        [format!(
            "{}+{}+pc+{since}+b",
            again["fencing"],
            token(&again)
        )]
    );
    locks
        .run(&["lock", "gone/x", "--client", "cli"])
        .assert_refused(1, &already("b"));
    locks
        .run(&["lock", "gone", "--client", "cli"])
        .assert_refused(1, &already("b"));
    assert_eq!(locks.json(&["status", "gone/x", "--json"])["client"], "b");
}

#[test]
fn fsync_mode_grants_and_releases() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--fsync"]);
    for round in 1..=2 {
        let (status, grant) =
            server.post_json("/v1/lock", &json!({"resource": "durable", "client": "f"}));
        assert_eq!((status, &grant["fencing"]), (200, &json!(round)), "{grant}");
        assert_eq!(
            server.get_json("/dohaz/durable"),
            (200, json!({"lockedBy": "f"}))
        );
        assert_eq!(locks.json(&["status", "durable", "--json"])["client"], "f");
        let (status, _) = server.post_json(
            "/v1/unlock",
            &json!({"resource": "durable", "token": token(&grant)}),
        );
        assert_eq!(status, 200);
        assert_eq!(locks.json(&["status", "durable", "--json"]), Value::Null);
    }
    assert_eq!(
        xmlrpc(
            &server.url("/RPC2"),
            json!([["lock", "r", "c"], ["lock", "r", "d"], ["unlock", "r", "c"]])
        ),
        [
            json!({"result": true}),
            json!({"fault": [1, already("c")]}),
            json!({"result": true})
        ]
    );
}

// --------------------------------------------------------- --fsync failures

/// An ext4 filesystem mounted over a directory, on a loop device whose
/// image lives on a small tmpfs. The image is written whole, then `fstrim`
/// punches the filesystem's free blocks out of it again: the journal, inode
/// tables and directories written so far stay in place, but any block
/// allocated from now on is a hole in the image. Once the tmpfs is full
/// (`fill`), new file data (`unsyncable`) cannot be written back, so the
/// next `syncfs(2)` on the filesystem fails (ENOSPC, reported through the
/// filesystem's writeback error): a real sync failure, without fault
/// injection, that leaves the journal whole, so locking works again once
/// the tmpfs has room (`free`). Needs root, `mount`, `losetup`,
/// `mkfs.ext4` and `fstrim`.
struct FailingDisk {
    /// Where the image lives; unmounted once the filesystem on it is.
    tmpfs: Tmpfs,
    mounted: std::path::PathBuf,
    device: String,
}

impl FailingDisk {
    /// Mounts a fresh one over `dir` (empty); why not, if it cannot.
    fn mount_on(dir: &std::path::Path) -> Result<FailingDisk, String> {
        let run = run_quietly;
        let mut disk = FailingDisk {
            tmpfs: Tmpfs::mount("size=40m").ok_or("no tmpfs for the image")?,
            mounted: std::path::PathBuf::new(),
            device: String::new(),
        };
        let image = disk.tmpfs.path().join("image");
        std::fs::write(&image, vec![0u8; 32 << 20]).map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(&image))?;
        disk.device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
        // No periodic commit, and no background writes to the inode tables.
        run(Command::new("mount")
            .args(["-o", "noinit_itable,commit=600,errors=continue"])
            .arg(&disk.device)
            .arg(dir))?;
        disk.mounted = dir.to_path_buf();
        run(Command::new("fstrim").arg(dir))?;
        Ok(disk)
    }

    /// Fills the tmpfs under the image: from now on, no new block of the
    /// filesystem can be written.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.tmpfs.path().join("filler")).expect("filler");
        let zeros = vec![0u8; 1 << 20];
        while filler.write_all(&zeros).is_ok() {}
    }

    /// Gives the tmpfs room again.
    fn free(&self) {
        std::fs::remove_file(self.tmpfs.path().join("filler")).expect("remove the filler");
    }

    /// Writes a new file beside the lock directory's entries (in
    /// `lost+found`, which ext4 makes and hasp leaves alone): its data is
    /// only written back by the next sync, which then fails while the tmpfs
    /// is full.
    fn unsyncable(&self, name: &str) {
        let file = self.mounted.join("lost+found").join(name);
        std::fs::write(&file, vec![1u8; 64 << 10]).expect("write into the page cache");
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        if !self.mounted.as_os_str().is_empty() {
            quiet(Command::new("umount").arg(&self.mounted));
        }
        if !self.device.is_empty() {
            quiet(Command::new("losetup").args(["-d", &self.device]));
        }
    }
}

/// Runs `cmd`; its stdout, trimmed, or why it failed.
fn run_quietly(cmd: &mut Command) -> Result<String, String> {
    let run = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if run.status.success() {
        Ok(String::from_utf8_lossy(&run.stdout).trim().to_string())
    } else {
        Err(format!("{cmd:?} failed: {run:?}"))
    }
}

/// The lines of `text` that say a sync failed.
fn sync_failures_logged(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("syncfs(2) failed"))
        .count()
}

#[test]
fn fsync_a_failed_sync_fails_the_change_through_every_door_and_is_counted_and_logged() {
    let locks = Locks::new();
    let disk = match FailingDisk::mount_on(locks.path()) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED fsync_a_failed_sync_...: {why}");
            return;
        }
    };
    let server = Server::start(&locks, &["--fsync"]);
    // Once locked and released, the resource's directories are on disk:
    // locking it again writes no new block but the journal's.
    let (status, grant) = server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
    assert_eq!(status, 200, "{grant}");
    let unlock = json!({"resource": "r", "token": token(&grant)});
    assert_eq!(server.post_json("/v1/unlock", &unlock).0, 200);

    disk.fill();
    let unsynced = |fencing: u64| {
        format!(
            "the lock on 'r' (fencing {fencing}) was granted but not synced (syncfs(2) failed: \
             No space left on device (os error 28)), so it was released again: nothing is granted"
        )
    };
    disk.unsyncable("1");
    let got = server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
    assert_error(&got, 503, "not-synced");
    assert_eq!(got.1["error"]["message"], unsynced(2), "{got:?}");
    assert!(got.1["error"].get("holder").is_none(), "{got:?}");

    disk.unsyncable("2");
    assert_eq!(
        xmlrpc(&server.url("/RPC2"), json!([["lock", "r", "a"]])),
        [json!({"fault": [3, unsynced(3)]})]
    );

    disk.unsyncable("3");
    let (status, body) = server.get("/canhaz/r?id=a");
    assert_ne!(status, 200, "{body}");
    assert!(
        body.contains(&unsynced(4)) && !body.contains("token"),
        "{body}"
    );

    // Nothing is held.
    assert_eq!(
        server.get_json("/v1/status?resource=r"),
        (200, json!({"lock": null}))
    );
    let metrics = server.get("/metrics").1;
    assert_eq!(
        sample(&metrics, "hasp_sync_failures_total"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "hasp_grants_total"),
        Some(1.0),
        "{metrics}"
    );

    // Room again: the next sync succeeds, and says so. (Each line is
    // printed before the answer it concerns: once the second is there, so
    // is the first.)
    disk.free();
    let (status, grant) = server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
    assert_eq!((status, &grant["fencing"]), (200, &json!(5)), "{grant}");
    let again = |text: &str| text.contains("syncs succeed again after 3 failed");
    assert!(server.stderr.wait_for(again), "{}", server.stderr());
    assert_eq!(
        sync_failures_logged(&server.stderr()),
        1,
        "{}",
        server.stderr()
    );

    // A release whose sync fails is done, but not acknowledged.
    disk.fill();
    disk.unsyncable("4");
    let got = server.post_json("/v1/unlock", &json!({"resource": "r", "client": "a"}));
    assert_error(&got, 503, "not-synced");
    assert_eq!(
        got.1["error"]["message"],
        "the lock on 'r' (fencing 5) was released but not synced (syncfs(2) failed: \
         No space left on device (os error 28)): a crash may undo it",
        "{got:?}"
    );
    assert_eq!(
        server.get_json("/v1/status?resource=r"),
        (200, json!({"lock": null}))
    );
    let metrics = server.get("/metrics").1;
    assert_eq!(
        sample(&metrics, "hasp_sync_failures_total"),
        Some(4.0),
        "{metrics}"
    );
    let twice = |text: &str| sync_failures_logged(text) == 2;
    assert!(server.stderr.wait_for(twice), "{}", server.stderr());
    disk.free();
    drop(server);
}
