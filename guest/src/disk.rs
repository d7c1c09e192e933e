//! The atomic filesystem steps the registry is built from, all relative to
//! the lock directory the host preopened. See docs/FORMAT.md for the layout
//! and for why these steps never double-grant.
//!
//! Each step is a single WASI filesystem call whose outcome is all-or-nothing:
//! a record is written in full under `tmp/` and then *renamed* into place as a
//! node's `.slot` directory (a rename onto a non-empty directory fails, which
//! is what makes a slot exclusive); a lock is released by unlinking its record,
//! whose file name is the grant's unique token, so a late or repeated release
//! can never remove somebody else's record.

use crate::errors;
use crate::hasp::lock::types::{Error, Grant};
use crate::name::{self, Name};
use crate::record;
use std::fs;
use std::io::{self, ErrorKind, Write};

/// Directory holding one node directory per resource, nested like the names.
pub const NODES: &str = "nodes";
/// Staging area for records before they are renamed into place.
pub const TMP: &str = "tmp";
/// File naming the layout version of the lock directory.
pub const FORMAT: &str = "FORMAT";
/// The content of [`FORMAT`] for this layout.
pub const FORMAT_LINE: &str = "hasp-lock-dir 1";

/// Inside a node: the slot directory (empty or one record named by its token).
const SLOT: &str = ".slot";
/// Inside a node: fencing high-water marks, one empty file per number.
const FENCE: &str = ".fence";
/// Inside a node: markers of descendants locked with lock-parents.
const MARKS: &str = ".ix";

/// A lock directory, opened through its preopen path.
pub struct Disk {
    root: String,
}

/// The record held in a node's slot, with the file it lives in.
pub struct Slot {
    /// The record's file name inside `.slot` (the grant's token).
    pub file: String,
    /// The parsed record.
    pub grant: Grant,
}

impl Disk {
    /// Opens the lock directory at preopen path `root`, laying it out if empty.
    pub fn open(root: &str) -> Result<Disk, Error> {
        let disk = Disk {
            root: root.trim_end_matches('/').to_string(),
        };
        match fs::metadata(&disk.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(not_a_dir(".")),
            Err(err) => return Err(errors::storage("open", ".", &err)),
        }
        match fs::read_to_string(disk.abs(FORMAT)) {
            Ok(text) => {
                let first = text.lines().next().unwrap_or("");
                if first != FORMAT_LINE {
                    return Err(errors::wrong_format(FORMAT, first));
                }
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {
                disk.make_dir(TMP)?;
                let staged = format!("{TMP}/{}.{FORMAT}", crate::token::uuid_v4());
                disk.write_new(&staged, &format!("{FORMAT_LINE}\n"))?;
                fs::rename(disk.abs(&staged), disk.abs(FORMAT))
                    .map_err(|e| errors::storage("create", FORMAT, &e))?;
            }
            Err(err) => return Err(errors::storage("read", FORMAT, &err)),
        }
        disk.make_dir(NODES)?;
        disk.make_dir(TMP)?;
        Ok(disk)
    }

    /// Makes sure the node directory of `name` and of all its ancestors exist,
    /// refusing any that is a symlink. Returns the node's relative path.
    pub fn ensure_node(&self, name: &Name) -> Result<String, Error> {
        let full = name.node_path();
        let mut end = NODES.len();
        while end < full.len() {
            end = full[end + 1..].find('/').map_or(full.len(), |at| end + 1 + at);
            let level = &full[..end];
            match fs::create_dir(self.abs(level)) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                    let meta = fs::symlink_metadata(self.abs(level))
                        .map_err(|e| errors::storage("inspect", level, &e))?;
                    if meta.file_type().is_symlink() {
                        return Err(errors::symlink(level));
                    }
                    if !meta.is_dir() {
                        return Err(not_a_dir(level));
                    }
                }
                Err(err) => return Err(errors::storage("create", level, &err)),
            }
        }
        Ok(full)
    }

    /// The record in `node`'s slot, or `None` when the resource is free.
    pub fn read_slot(&self, node: &str) -> Result<Option<Slot>, Error> {
        let slot = format!("{node}/{SLOT}");
        let entries = match fs::read_dir(self.abs(&slot)) {
            Ok(entries) => entries,
            Err(err) if gone(&err) => return Ok(None),
            Err(err) => return Err(errors::storage("read", &slot, &err)),
        };
        let mut files = Vec::with_capacity(1);
        for entry in entries {
            let entry = entry.map_err(|e| errors::storage("read", &slot, &e))?;
            files.push(entry.file_name().to_string_lossy().into_owned());
        }
        let file = match files.len() {
            0 => return Ok(None),
            1 => files.pop().unwrap_or_default(),
            _ => return Err(errors::corrupt(&slot, "it holds more than one record")),
        };
        let path = format!("{slot}/{file}");
        let text = match fs::read_to_string(self.abs(&path)) {
            Ok(text) => text,
            Err(err) if gone(&err) => return Ok(None), // released meanwhile
            Err(err) if err.kind() == ErrorKind::InvalidData => {
                return Err(errors::corrupt(&path, "it is not UTF-8 text"))
            }
            Err(err) => return Err(errors::storage("read", &path, &err)),
        };
        let grant = record::decode(&text).map_err(|why| errors::corrupt(&path, &why))?;
        Ok(Some(Slot { file, grant }))
    }

    /// Writes `grant` in full under `tmp/`, then renames it into place as the
    /// slot of `node`. Returns false, leaving nothing behind, when the slot
    /// already holds a record.
    pub fn commit(&self, node: &str, grant: &Grant) -> Result<bool, Error> {
        let staged = format!("{TMP}/{}", grant.token);
        self.make_dir(&staged)?;
        let file = format!("{staged}/{}", grant.token);
        let outcome = self
            .write_new(&file, &record::encode(grant))
            .and_then(|()| self.rename_slot(&staged, node));
        if !matches!(outcome, Ok(true)) {
            let _ = fs::remove_file(self.abs(&file));
            let _ = fs::remove_dir(self.abs(&staged));
        }
        outcome
    }

    fn rename_slot(&self, staged: &str, node: &str) -> Result<bool, Error> {
        let slot = format!("{node}/{SLOT}");
        match fs::rename(self.abs(staged), self.abs(&slot)) {
            Ok(()) => Ok(true),
            Err(err) => match self.read_slot(node)? {
                Some(_) => Ok(false),
                // Emptied between our rename and our look: report it as held
                // all the same; the caller's retry will see it free.
                None if matches!(
                    err.kind(),
                    ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists
                ) =>
                {
                    Ok(false)
                }
                None => Err(errors::storage("rename into", &slot, &err)),
            },
        }
    }

    /// Removes the record `file` from `node`'s slot. False if it was gone.
    pub fn release(&self, node: &str, file: &str) -> Result<bool, Error> {
        let path = format!("{node}/{SLOT}/{file}");
        match fs::remove_file(self.abs(&path)) {
            Ok(()) => Ok(true),
            Err(err) if gone(&err) => Ok(false),
            Err(err) => Err(errors::storage("remove", &path, &err)),
        }
    }

    /// The highest fencing number ever claimed on `node` (0 if none).
    pub fn fence_max(&self, node: &str) -> Result<u64, Error> {
        Ok(self.fences(node)?.into_iter().max().unwrap_or(0))
    }

    fn fences(&self, node: &str) -> Result<Vec<u64>, Error> {
        let dir = format!("{node}/{FENCE}");
        let entries = match fs::read_dir(self.abs(&dir)) {
            Ok(entries) => entries,
            Err(err) if gone(&err) => return Ok(Vec::new()),
            Err(err) => return Err(errors::storage("read", &dir, &err)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| errors::storage("read", &dir, &e))?;
            if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Claims fencing number `n` on `node` by creating its marker file.
    /// False when somebody claimed the same number first.
    pub fn fence_claim(&self, node: &str, n: u64) -> Result<bool, Error> {
        self.make_dir(&format!("{node}/{FENCE}"))?;
        let path = format!("{node}/{FENCE}/{n}");
        match fs::File::create_new(self.abs(&path)) {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(errors::storage("create", &path, &err)),
        }
    }

    /// Deletes the fencing marks below `keep` (best effort: they only repeat
    /// what `keep` already says).
    pub fn fence_prune(&self, node: &str, keep: u64) {
        if let Ok(all) = self.fences(node) {
            for n in all.into_iter().filter(|&n| n < keep) {
                let _ = fs::remove_file(self.abs(&format!("{node}/{FENCE}/{n}")));
            }
        }
    }

    /// Records in ancestor `node` that `descendant` is being locked with
    /// lock-parents by the attempt `token`.
    pub fn mark(&self, node: &str, token: &str, descendant: &Name) -> Result<(), Error> {
        self.make_dir(&format!("{node}/{MARKS}"))?;
        self.write_new(&format!("{node}/{MARKS}/{token}"), descendant.as_str())
    }

    /// Removes the marker of attempt `token` from ancestor `node` (best effort).
    pub fn unmark(&self, node: &str, token: &str) {
        let _ = fs::remove_file(self.abs(&format!("{node}/{MARKS}/{token}")));
    }

    /// The descendants named by the markers in `node`, each once. A marker that
    /// cannot be read (being written, or left torn by a crash before its lock
    /// was committed) names nothing.
    pub fn marked(&self, node: &str) -> Result<Vec<String>, Error> {
        let dir = format!("{node}/{MARKS}");
        let entries = match fs::read_dir(self.abs(&dir)) {
            Ok(entries) => entries,
            Err(err) if gone(&err) => return Ok(Vec::new()),
            Err(err) => return Err(errors::storage("read", &dir, &err)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| errors::storage("read", &dir, &e))?;
            if let Ok(text) = fs::read_to_string(entry.path()) {
                if !out.contains(&text) {
                    out.push(text);
                }
            }
        }
        Ok(out)
    }

    /// Every held record at or below `node`, appended to `out`.
    pub fn walk(&self, node: &str, out: &mut Vec<Grant>) -> Result<(), Error> {
        if let Some(slot) = self.read_slot(node)? {
            out.push(slot.grant);
        }
        let entries = match fs::read_dir(self.abs(node)) {
            Ok(entries) => entries,
            Err(err) if gone(&err) => return Ok(()),
            Err(err) => return Err(errors::storage("read", node, &err)),
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| errors::storage("read", node, &e))?;
            let Ok(child) = entry.file_name().into_string() else { continue };
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && name::decode_segment(&child).is_some() {
                children.push(child);
            }
        }
        for child in children {
            self.walk(&format!("{node}/{child}"), out)?;
        }
        Ok(())
    }

    fn abs(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }

    fn make_dir(&self, rel: &str) -> Result<(), Error> {
        match fs::create_dir(self.abs(rel)) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(err) => Err(errors::storage("create", rel, &err)),
        }
    }

    fn write_new(&self, rel: &str, text: &str) -> Result<(), Error> {
        let write = || -> io::Result<()> {
            let mut file = fs::File::create_new(self.abs(rel))?;
            file.write_all(text.as_bytes())
        };
        write().map_err(|err| errors::storage("write", rel, &err))
    }
}

/// Whether an error means "not there" (also a missing parent directory).
fn gone(err: &io::Error) -> bool {
    err.kind() == ErrorKind::NotFound
}

fn not_a_dir(path: &str) -> Error {
    errors::storage(
        "use",
        path,
        &io::Error::new(ErrorKind::NotADirectory, "not a directory"),
    )
}
