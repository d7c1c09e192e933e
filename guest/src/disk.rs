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

/// A record written in full under `tmp/`, not yet committed.
pub struct Staged {
    /// `tmp/<token>`: becomes the node's `.slot` on commit.
    dir: String,
    /// The record's file name inside it (the token).
    file: String,
}

impl Staged {
    fn path(&self) -> String {
        format!("{}/{}", self.dir, self.file)
    }
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
            end = full[end + 1..]
                .find('/')
                .map_or(full.len(), |at| end + 1 + at);
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
        let Some(mut files) = self.names(&slot)? else {
            return Ok(None);
        };
        let file = match files.len() {
            0 => return Ok(None),
            1 => files.pop().unwrap_or_default(),
            _ => return Err(errors::corrupt(&slot, "it holds more than one record")),
        };
        let path = format!("{slot}/{file}");
        let Some(grant) = self.read_record(&path)? else {
            return Ok(None); // released meanwhile
        };
        Ok(Some(Slot { file, grant }))
    }

    /// Reads and parses the record file `path`; `None` if it is gone.
    fn read_record(&self, path: &str) -> Result<Option<Grant>, Error> {
        let text = match fs::read_to_string(self.abs(path)) {
            Ok(text) => text,
            Err(err) if gone(&err) => return Ok(None),
            Err(err) if err.kind() == ErrorKind::InvalidData => {
                return Err(errors::corrupt(path, "it is not UTF-8 text"))
            }
            Err(err) => return Err(errors::storage("read", path, &err)),
        };
        record::decode(&text)
            .map(Some)
            .map_err(|why| errors::corrupt(path, &why))
    }

    /// Writes `grant` in full as `tmp/<token>/<token>`, ready to be linked as
    /// a marker and renamed into place.
    pub fn stage(&self, grant: &Grant) -> Result<Staged, Error> {
        let staged = Staged {
            dir: format!("{TMP}/{}", grant.token),
            file: grant.token.clone(),
        };
        self.make_dir(&staged.dir)?;
        if let Err(err) = self.write_new(&staged.path(), &record::encode(grant)) {
            self.discard(&staged);
            return Err(err);
        }
        Ok(staged)
    }

    /// Removes a staged record that was not committed (best effort).
    pub fn discard(&self, staged: &Staged) {
        let _ = fs::remove_file(self.abs(&staged.path()));
        let _ = fs::remove_dir(self.abs(&staged.dir));
    }

    /// Renames the staged record's directory into place as `node`'s slot.
    /// Returns false, leaving the staged record as it was, when the slot
    /// already holds a record.
    pub fn commit(&self, staged: &Staged, node: &str) -> Result<bool, Error> {
        let slot = format!("{node}/{SLOT}");
        match fs::rename(self.abs(&staged.dir), self.abs(&slot)) {
            Ok(()) => Ok(true),
            Err(err) => match self.read_slot(node)? {
                Some(_) => Ok(false),
                // Emptied between our rename and our look: report it as held
                // all the same; the caller's retry will see it free.
                None if slot_was_taken(&err) => Ok(false),
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

    /// The fencing high-water mark of `node`: the highest number ever
    /// granted there (0 if none).
    pub fn fence_current(&self, node: &str) -> Result<u64, Error> {
        Ok(self.fences(node)?.into_iter().max().unwrap_or(0))
    }

    fn fences(&self, node: &str) -> Result<Vec<u64>, Error> {
        let names = self.names(&format!("{node}/{FENCE}"))?.unwrap_or_default();
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// Moves the high-water mark of `node` from `from` to `to`: a rename of
    /// the file `.fence/<from>` to `.fence/<to>`, which only one caller can
    /// win. False when the mark is no longer `from`.
    pub fn fence_advance(&self, node: &str, from: u64, to: u64) -> Result<bool, Error> {
        let dir = format!("{node}/{FENCE}");
        let target = format!("{dir}/{to}");
        if from == 0 {
            // First grant ever: create the mark. A racer that created and
            // advanced it meanwhile leaves a higher mark, hence the re-read.
            self.make_dir(&dir)?;
            return match fs::File::create_new(self.abs(&target)) {
                Ok(_) => Ok(self.fence_current(node)? == to),
                Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(err) => Err(errors::storage("create", &target, &err)),
            };
        }
        match fs::rename(self.abs(&format!("{dir}/{from}")), self.abs(&target)) {
            Ok(()) => Ok(true),
            Err(err) if gone(&err) => Ok(false),
            Err(err) => Err(errors::storage("rename", &target, &err)),
        }
    }

    /// Deletes marks below `keep` left by a lost first-grant race (best effort).
    pub fn fence_prune(&self, node: &str, keep: u64) {
        if let Ok(all) = self.fences(node) {
            for n in all.into_iter().filter(|&n| n < keep) {
                let _ = fs::remove_file(self.abs(&format!("{node}/{FENCE}/{n}")));
            }
        }
    }

    /// Makes the staged record findable from ancestor `node`: a hard link
    /// `.ix/<token>` to the record itself (no copy is written).
    pub fn mark(&self, node: &str, staged: &Staged) -> Result<(), Error> {
        let dir = format!("{node}/{MARKS}");
        self.make_dir(&dir)?;
        let marker = format!("{dir}/{}", staged.file);
        fs::hard_link(self.abs(&staged.path()), self.abs(&marker))
            .map_err(|err| errors::storage("link", &marker, &err))
    }

    /// Removes the marker of attempt `token` from ancestor `node` (best effort).
    pub fn unmark(&self, node: &str, token: &str) {
        let _ = fs::remove_file(self.abs(&format!("{node}/{MARKS}/{token}")));
    }

    /// The resources named by the markers in `node`, each once. A marker
    /// is a hard link to a complete record, so one that does not parse is
    /// corrupt, and reported: skipping it could grant over its lock.
    pub fn marked(&self, node: &str) -> Result<Vec<String>, Error> {
        let dir = format!("{node}/{MARKS}");
        let mut out = Vec::new();
        for marker in self.names(&dir)?.unwrap_or_default() {
            let path = format!("{dir}/{marker}");
            let Some(grant) = self.read_record(&path)? else {
                continue; // withdrawn or unlocked meanwhile
            };
            if !out.contains(&grant.holder.resource) {
                out.push(grant.holder.resource);
            }
        }
        Ok(out)
    }

    /// Every held record at or below `node`, appended to `out`.
    pub fn walk(&self, node: &str, out: &mut Vec<Grant>) -> Result<(), Error> {
        if let Some(slot) = self.read_slot(node)? {
            out.push(slot.grant);
        }
        for child in self.names(node)?.unwrap_or_default() {
            if name::decode_segment(&child).is_none() {
                continue; // `.slot`, `.fence`, `.ix`
            }
            let path = format!("{node}/{child}");
            match fs::symlink_metadata(self.abs(&path)) {
                Ok(meta) if meta.is_dir() => self.walk(&path, out)?,
                Ok(_) => {}
                Err(err) if gone(&err) => {}
                Err(err) => return Err(errors::storage("inspect", &path, &err)),
            }
        }
        Ok(())
    }

    /// The entry names of directory `rel`, or `None` if it does not exist.
    /// An entry removed while the listing is read makes the listing start
    /// over, so the result is a listing taken at one moment.
    fn names(&self, rel: &str) -> Result<Option<Vec<String>>, Error> {
        'listing: for _ in 0..LISTING_RETRIES {
            let entries = match fs::read_dir(self.abs(rel)) {
                Ok(entries) => entries,
                Err(err) if gone(&err) => return Ok(None),
                Err(err) => return Err(errors::storage("read", rel, &err)),
            };
            let mut names = Vec::new();
            for entry in entries {
                match entry {
                    Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
                    Err(err) if gone(&err) => continue 'listing,
                    Err(err) => return Err(errors::storage("read", rel, &err)),
                }
            }
            return Ok(Some(names));
        }
        let churn = io::Error::other("entries kept changing while it was read");
        Err(errors::storage("read", rel, &churn))
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

/// How often a directory listing starts over because entries vanished.
const LISTING_RETRIES: usize = 32;

/// Whether a failed rename onto a slot means the slot held a record. WASI
/// reports `notempty` (55) or `exist` (20); std may not name their kinds.
fn slot_was_taken(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists
    ) || matches!(err.raw_os_error(), Some(55 | 20))
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
