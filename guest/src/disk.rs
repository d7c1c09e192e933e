//! The atomic filesystem steps the registry is built from, all inside the
//! lock directory. See docs/FORMAT.md for the layout and for why these steps
//! never double-grant.
//!
//! Each step is one WASI filesystem call whose outcome is all-or-nothing: a
//! record is written in full under `tmp/` and then *renamed* into place as a
//! node's `.slot` directory (a rename onto a non-empty directory fails, which
//! makes a slot exclusive); a lock is released by unlinking its record, whose
//! file name is the grant's unique token; a fencing mark moves by renaming
//! the one file that names it.

use crate::dir::Dir;
use crate::errors;
use crate::hasp::lock::types::{Error, Grant};
use crate::name::{self, Name};
use crate::record;
use std::collections::BTreeSet;
use wasip2::filesystem::types::{DescriptorType, ErrorCode};

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
/// Inside a node: the fencing mark, one empty file named `<n>-<token>`.
const FENCE: &str = ".fence";
/// Inside a node: markers of descendants locked with lock-parents.
const MARKS: &str = ".ix";

/// The lock directory.
pub struct Disk {
    dir: Dir,
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

/// The record found in a node's slot, with the file it lives in.
pub struct Slot {
    /// The record's file name inside `.slot` (the grant's token).
    pub file: String,
    /// The parsed record.
    pub grant: Grant,
}

/// A node's fencing mark: the highest fencing number handed out there, and
/// the token of the attempt that claimed it (`None` for the initial `0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The number.
    pub number: u64,
    /// Who claimed it.
    pub token: Option<String>,
}

impl Mark {
    fn file_name(&self) -> String {
        match &self.token {
            Some(token) => format!("{}-{token}", self.number),
            None => self.number.to_string(),
        }
    }

    fn parse(file: &str) -> Option<Mark> {
        let (number, token) = match file.split_once('-') {
            Some((n, t)) => (n, Some(t.to_string())),
            None => (file, None),
        };
        Some(Mark {
            number: number.parse().ok()?,
            token,
        })
    }
}

impl Disk {
    /// Opens the lock directory preopened as `root`, laying it out if it has
    /// no `FORMAT` yet.
    pub fn open(root: &str) -> Result<Disk, Error> {
        let Some(dir) = Dir::preopened(root) else {
            return Err(errors::io_failure(
                "open",
                root,
                "no such preopened directory (the host must grant it)",
            ));
        };
        let disk = Disk { dir };
        match disk.dir.read(FORMAT).map_err(fail("read", FORMAT))? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let first = text.lines().next().unwrap_or("");
                if first != FORMAT_LINE {
                    return Err(errors::wrong_format(FORMAT, first));
                }
            }
            None => {
                disk.make_dir(TMP)?;
                let staged = format!("{TMP}/{}.{FORMAT}", crate::token::uuid_v4());
                disk.write_new(&staged, format!("{FORMAT_LINE}\n").as_bytes())?;
                disk.dir
                    .rename(&staged, FORMAT)
                    .map_err(fail("create", FORMAT))?;
            }
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
            if self.dir.mkdir(level).map_err(fail("create", level))? {
                continue;
            }
            match self.dir.kind(level).map_err(fail("inspect", level))? {
                Some(DescriptorType::Directory) => {}
                Some(DescriptorType::SymbolicLink) => return Err(errors::symlink(level)),
                Some(_) => return Err(errors::storage("use", level, ErrorCode::NotDirectory)),
                None => return Err(errors::storage("create", level, ErrorCode::NoEntry)),
            }
        }
        Ok(full)
    }

    /// The record in `node`'s slot, or `None` when the slot is empty.
    pub fn read_slot(&self, node: &str) -> Result<Option<Slot>, Error> {
        let slot = format!("{node}/{SLOT}");
        let Some(mut files) = self.dir.names(&slot).map_err(fail("read", &slot))? else {
            return Ok(None);
        };
        let file = match files.len() {
            0 => return Ok(None),
            1 => files.pop().unwrap_or_default(),
            _ => return Err(errors::corrupt(&slot, "it holds more than one record")),
        };
        let Some(grant) = self.read_record(&format!("{slot}/{file}"))? else {
            return Ok(None); // released meanwhile
        };
        Ok(Some(Slot { file, grant }))
    }

    /// Reads and parses the record file `path`; `None` if it is gone.
    fn read_record(&self, path: &str) -> Result<Option<Grant>, Error> {
        let Some(bytes) = self.dir.read(path).map_err(fail("read", path))? else {
            return Ok(None);
        };
        let text =
            String::from_utf8(bytes).map_err(|_| errors::corrupt(path, "it is not UTF-8 text"))?;
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
        if let Err(err) = self.write_new(&staged.path(), record::encode(grant).as_bytes()) {
            self.discard(&staged);
            return Err(err);
        }
        Ok(staged)
    }

    /// Removes a staged record that was not committed (best effort).
    pub fn discard(&self, staged: &Staged) {
        let _ = self.dir.unlink(&staged.path());
        let _ = self.dir.rmdir(&staged.dir);
    }

    /// Renames the staged record's directory into place as `node`'s slot.
    /// False, leaving the staged record as it was, when the slot is taken.
    pub fn commit(&self, staged: &Staged, node: &str) -> Result<bool, Error> {
        let slot = format!("{node}/{SLOT}");
        match self.dir.rename(&staged.dir, &slot) {
            Ok(()) => Ok(true),
            Err(ErrorCode::NotEmpty | ErrorCode::Exist) => Ok(false),
            Err(err) => Err(errors::storage("rename into", &slot, err)),
        }
    }

    /// Removes the record `file` from `node`'s slot. False if it was gone.
    pub fn release(&self, node: &str, file: &str) -> Result<bool, Error> {
        let path = format!("{node}/{SLOT}/{file}");
        self.dir.unlink(&path).map_err(fail("remove", &path))
    }

    /// The fencing mark of `node`, or `None` before its first lock attempt.
    pub fn fence_mark(&self, node: &str) -> Result<Option<Mark>, Error> {
        let dir = format!("{node}/{FENCE}");
        let names = self.dir.names(&dir).map_err(fail("read", &dir))?;
        Ok(names
            .unwrap_or_default()
            .iter()
            .filter_map(|n| Mark::parse(n))
            .max_by_key(|m| m.number))
    }

    /// Creates the initial mark `0` of `node` unless it has one: a staged
    /// directory renamed onto `.fence`, which fails once `.fence` holds a mark.
    pub fn fence_init(&self, node: &str) -> Result<(), Error> {
        let staged = Staged {
            dir: format!("{TMP}/{}", crate::token::uuid_v4()),
            file: "0".to_string(),
        };
        self.make_dir(&staged.dir)?;
        self.write_new(&staged.path(), b"")?;
        let target = format!("{node}/{FENCE}");
        match self.dir.rename(&staged.dir, &target) {
            Ok(()) => Ok(()),
            Err(ErrorCode::NotEmpty | ErrorCode::Exist) => {
                self.discard(&staged);
                Ok(())
            }
            Err(err) => {
                self.discard(&staged);
                Err(errors::storage("rename into", &target, err))
            }
        }
    }

    /// Moves the mark of `node` from `from` to `to`: a rename of the one mark
    /// file, which only one caller can win. False when it is no longer `from`.
    pub fn fence_advance(&self, node: &str, from: &Mark, to: &Mark) -> Result<bool, Error> {
        let old = format!("{node}/{FENCE}/{}", from.file_name());
        let new = format!("{node}/{FENCE}/{}", to.file_name());
        match self.dir.rename(&old, &new) {
            Ok(()) => Ok(true),
            Err(ErrorCode::NoEntry) => Ok(false),
            Err(err) => Err(errors::storage("rename", &old, err)),
        }
    }

    /// Makes the staged record findable from ancestor `node`: a hard link
    /// `.ix/<token>` to the record itself (no copy is written).
    pub fn link_marker(&self, node: &str, staged: &Staged) -> Result<(), Error> {
        let dir = format!("{node}/{MARKS}");
        self.make_dir(&dir)?;
        let marker = format!("{dir}/{}", staged.file);
        self.dir
            .link(&staged.path(), &marker)
            .map_err(fail("link", &marker))
    }

    /// Removes the marker of attempt `token` from ancestor `node` (best effort).
    pub fn unmark(&self, node: &str, token: &str) {
        let _ = self.dir.unlink(&format!("{node}/{MARKS}/{token}"));
    }

    /// The resources named by the markers in `node`, each once. A marker is a
    /// hard link to a complete record, so one that does not parse is corrupt
    /// and reported: skipping it could grant over its lock.
    pub fn marked(&self, node: &str) -> Result<BTreeSet<String>, Error> {
        let dir = format!("{node}/{MARKS}");
        let mut out = BTreeSet::new();
        for marker in self
            .dir
            .names(&dir)
            .map_err(fail("read", &dir))?
            .unwrap_or_default()
        {
            if let Some(grant) = self.read_record(&format!("{dir}/{marker}"))? {
                out.insert(grant.holder.resource);
            }
        }
        Ok(out)
    }

    /// `node` and every node below it, depth first.
    pub fn walk(&self, node: &str, out: &mut Vec<String>) -> Result<(), Error> {
        out.push(node.to_string());
        let children = self.dir.names(node).map_err(fail("read", node))?;
        for child in children.unwrap_or_default() {
            if name::decode_segment(&child).is_none() {
                continue; // `.slot`, `.fence`, `.ix`
            }
            let path = format!("{node}/{child}");
            if self.dir.kind(&path).map_err(fail("inspect", &path))?
                == Some(DescriptorType::Directory)
            {
                self.walk(&path, out)?;
            }
        }
        Ok(())
    }

    fn make_dir(&self, path: &str) -> Result<(), Error> {
        self.dir
            .mkdir(path)
            .map(|_| ())
            .map_err(fail("create", path))
    }

    fn write_new(&self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        self.dir.write_new(path, bytes).map_err(fail("write", path))
    }
}

/// Maps a failed call on `path` to a storage error.
fn fail<'a>(action: &'a str, path: &'a str) -> impl FnOnce(ErrorCode) -> Error + 'a {
    move |code| errors::storage(action, path, code)
}
