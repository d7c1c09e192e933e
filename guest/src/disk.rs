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
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
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
    /// `tmp/`, held open.
    tmp: Dir,
    /// Node directories held open, by node path (see [`Node`]).
    nodes: RefCell<HashMap<String, Rc<Node>>>,
    /// Counts calls, so each held node is checked once per call.
    call: Cell<u64>,
}

/// How many node directories a registry keeps open at most (each holds up
/// to three descriptors); past that the cache starts again empty. Several
/// registries share a process (`hasp serve` runs one per worker), so this
/// stays well under the usual limit of 1024 open files.
const OPEN_NODES: usize = 32;

/// A node directory held open across calls, with its `.fence` and `.ix`
/// once they exist. Holding them is safe because none is ever removed or
/// replaced once it exists (the slot is: it is always reached by name).
/// Nothing here is lock state: every answer still comes from the disk.
struct Node {
    dir: Dir,
    fence: OnceCell<Dir>,
    marks: OnceCell<Dir>,
    /// The mark this registry saw last; checked on disk before it is used.
    hint: RefCell<Option<Mark>>,
    /// The call in which the directory was last found still in place.
    checked: Cell<u64>,
}

/// A record written in full under `tmp/`, not yet committed.
pub struct Staged {
    /// `<token>` in `tmp/`: becomes the node's `.slot` on commit.
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
        match dir.read(FORMAT).map_err(fail("read", FORMAT))? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let first = text.lines().next().unwrap_or("");
                if first != FORMAT_LINE {
                    return Err(errors::wrong_format(FORMAT, first));
                }
            }
            None => {
                make_dir(&dir, TMP)?;
                let staged = format!("{TMP}/{}.{FORMAT}", crate::token::uuid_v4());
                write_new(&dir, &staged, format!("{FORMAT_LINE}\n").as_bytes())?;
                dir.rename(&staged, FORMAT)
                    .map_err(fail("create", FORMAT))?;
            }
        }
        make_dir(&dir, NODES)?;
        make_dir(&dir, TMP)?;
        let tmp = open_dir(&dir, TMP)?;
        Ok(Disk {
            dir,
            tmp,
            nodes: RefCell::new(HashMap::new()),
            call: Cell::new(0),
        })
    }

    /// Starts a registry call: nodes held open are checked again (once) in
    /// it, so a node an operator removed meanwhile is opened afresh.
    pub fn begin_call(&self) {
        self.call.set(self.call.get() + 1);
    }

    /// The node directory at `path`, held open; `None` if it does not exist.
    fn node(&self, path: &str) -> Result<Option<Rc<Node>>, Error> {
        let held = self.nodes.borrow().get(path).cloned();
        if let Some(node) = held {
            if node.checked.get() == self.call.get() {
                return Ok(Some(node));
            }
            if matches!(node.dir.is_removed(), Ok(false)) {
                node.checked.set(self.call.get());
                return Ok(Some(node));
            }
            self.forget();
        }
        let dir = match self.dir.open_dir(path) {
            Ok(Some(dir)) => dir,
            Ok(None) => return Ok(None),
            Err(err) => {
                // Perhaps out of descriptors: let go of the cached ones.
                self.forget();
                return Err(self.not_a_node(path, err));
            }
        };
        let node = Rc::new(Node {
            dir,
            fence: OnceCell::new(),
            marks: OnceCell::new(),
            hint: RefCell::new(None),
            checked: Cell::new(self.call.get()),
        });
        let mut nodes = self.nodes.borrow_mut();
        if nodes.len() >= OPEN_NODES {
            nodes.clear();
        }
        nodes.insert(path.to_string(), node.clone());
        Ok(Some(node))
    }

    /// The node directory at `path`, which must exist.
    fn existing(&self, path: &str) -> Result<Rc<Node>, Error> {
        self.node(path)?
            .ok_or_else(|| errors::storage("open", path, ErrorCode::NoEntry))
    }

    /// Lets go of every node directory held open. Called when a node was
    /// found gone, which the layout rules out but an operator may do, and
    /// after any failed call (out of descriptors, say).
    pub fn forget(&self) {
        self.nodes.borrow_mut().clear();
    }

    /// Why `path` could not be opened as a node directory, for people.
    fn not_a_node(&self, path: &str, err: ErrorCode) -> Error {
        match self.dir.kind(path) {
            Ok(Some(DescriptorType::SymbolicLink)) => errors::symlink(path),
            Ok(Some(DescriptorType::Directory)) | Ok(None) | Err(_) => {
                errors::storage("open", path, err)
            }
            Ok(Some(_)) => errors::storage("use", path, ErrorCode::NotDirectory),
        }
    }

    /// Makes sure the node directory of `name` and of all its ancestors exist,
    /// refusing any that is a symlink. Returns the node's relative path.
    pub fn ensure_node(&self, name: &Name) -> Result<String, Error> {
        let full = name.node_path();
        // Held open (and still in place): its levels were checked when opened.
        if self.nodes.borrow().contains_key(&full) && self.node(&full)?.is_some() {
            return Ok(full);
        }
        let mut end = NODES.len();
        while end < full.len() {
            end = full[end + 1..]
                .find('/')
                .map_or(full.len(), |at| end + 1 + at);
            let level = &full[..end];
            let mut kind = self.dir.kind(level).map_err(fail("inspect", level))?;
            if kind.is_none() {
                if self.dir.mkdir(level).map_err(fail("create", level))? {
                    continue;
                }
                kind = self.dir.kind(level).map_err(fail("inspect", level))?;
            }
            match kind {
                Some(DescriptorType::Directory) => {}
                Some(DescriptorType::SymbolicLink) => return Err(errors::symlink(level)),
                Some(_) => return Err(errors::storage("use", level, ErrorCode::NotDirectory)),
                None => return Err(errors::storage("create", level, ErrorCode::NoEntry)),
            }
        }
        self.existing(&full)?;
        Ok(full)
    }

    /// The record in `node`'s slot, or `None` when the slot is empty.
    ///
    /// Emptiness is asked with `rmdir .slot`: it succeeds only on an empty
    /// slot, and a missing slot is as good as an empty one (the commit's
    /// rename creates it), so one call answers the common case.
    pub fn read_slot(&self, node: &str) -> Result<Option<Slot>, Error> {
        let Some(dir) = self.node(node)? else {
            return Ok(None);
        };
        let slot = format!("{node}/{SLOT}");
        match dir.dir.rmdir(SLOT) {
            Ok(_) => return Ok(None),
            Err(ErrorCode::NotEmpty | ErrorCode::Exist) => {}
            // A read-only directory, say: look inside instead.
            Err(_) => {}
        }
        let Some(mut files) = dir.dir.names(SLOT).map_err(fail("read", &slot))? else {
            return Ok(None);
        };
        let file = match files.len() {
            0 => return Ok(None),
            1 => files.pop().unwrap_or_default(),
            _ => return Err(errors::corrupt(&slot, "it holds more than one record")),
        };
        self.slot_file(node, &file)
    }

    /// The record named `file` in `node`'s slot, or `None` if it is not there.
    pub fn slot_file(&self, node: &str, file: &str) -> Result<Option<Slot>, Error> {
        let Some(dir) = self.node(node)? else {
            return Ok(None);
        };
        let path = format!("{SLOT}/{file}");
        let Some(grant) = read_record(&dir.dir, &path, &format!("{node}/{path}"))? else {
            return Ok(None); // released meanwhile
        };
        Ok(Some(Slot {
            file: file.to_string(),
            grant,
        }))
    }

    /// Writes `grant` in full as `tmp/<token>/<token>`, ready to be linked as
    /// a marker and renamed into place.
    pub fn stage(&self, grant: &Grant) -> Result<Staged, Error> {
        let staged = Staged {
            dir: grant.token.clone(),
            file: grant.token.clone(),
        };
        make_dir(&self.tmp, &staged.dir)?;
        if let Err(err) = write_new(&self.tmp, &staged.path(), record::encode(grant).as_bytes()) {
            self.discard(&staged);
            return Err(err);
        }
        Ok(staged)
    }

    /// Removes a staged record that was not committed (best effort).
    pub fn discard(&self, staged: &Staged) {
        let _ = self.tmp.unlink(&staged.path());
        let _ = self.tmp.rmdir(&staged.dir);
    }

    /// Renames the staged record's directory into place as `node`'s slot.
    /// False, leaving the staged record as it was, when the slot is taken.
    pub fn commit(&self, staged: &Staged, node: &str) -> Result<bool, Error> {
        let slot = format!("{node}/{SLOT}");
        let dir = self.existing(node)?;
        match self.tmp.rename_into(&staged.dir, &dir.dir, SLOT) {
            Ok(()) => Ok(true),
            Err(ErrorCode::NotEmpty | ErrorCode::Exist) => Ok(false),
            Err(ErrorCode::NoEntry) => {
                // The node directory held open was removed: start over.
                self.forget();
                Ok(false)
            }
            Err(err) => Err(errors::storage("rename into", &slot, err)),
        }
    }

    /// Removes the record `file` from `node`'s slot. False if it was gone.
    pub fn release(&self, node: &str, file: &str) -> Result<bool, Error> {
        let Some(dir) = self.node(node)? else {
            return Ok(false);
        };
        let path = format!("{SLOT}/{file}");
        dir.dir
            .unlink(&path)
            .map_err(fail("remove", &format!("{node}/{path}")))
    }

    /// `node`'s `.fence`, held open once it exists.
    fn fence<'a>(&self, node: &str, dir: &'a Node) -> Result<Option<&'a Dir>, Error> {
        if let Some(fence) = dir.fence.get() {
            return Ok(Some(fence));
        }
        let path = format!("{node}/{FENCE}");
        let Some(fence) = dir.dir.open_dir(FENCE).map_err(fail("read", &path))? else {
            return Ok(None);
        };
        Ok(Some(dir.fence.get_or_init(|| fence)))
    }

    /// The fencing mark of `node`, or `None` before its first lock attempt.
    pub fn fence_mark(&self, node: &str) -> Result<Option<Mark>, Error> {
        let Some(dir) = self.node(node)? else {
            return Ok(None);
        };
        let Some(fence) = self.fence(node, &dir)? else {
            return Ok(None);
        };
        let hint = dir.hint.borrow().clone();
        if let Some(hint) = hint {
            if fence.exists(&hint.file_name()).unwrap_or(false) {
                return Ok(Some(hint));
            }
        }
        let path = format!("{node}/{FENCE}");
        let mark = fence
            .list()
            .map_err(fail("read", &path))?
            .iter()
            .filter_map(|n| Mark::parse(n))
            .max_by_key(|m| m.number);
        *dir.hint.borrow_mut() = mark.clone();
        Ok(mark)
    }

    /// Whether the fencing mark of `node` is exactly `mark` (one look, since
    /// `.fence` holds one file).
    pub fn is_mark(&self, node: &str, mark: &Mark) -> Result<bool, Error> {
        let Some(dir) = self.node(node)? else {
            return Ok(false);
        };
        let Some(fence) = self.fence(node, &dir)? else {
            return Ok(false);
        };
        let file = mark.file_name();
        let found = fence
            .exists(&file)
            .map_err(fail("inspect", &format!("{node}/{FENCE}/{file}")))?;
        if found {
            *dir.hint.borrow_mut() = Some(mark.clone());
        }
        Ok(found)
    }

    /// Creates the initial mark `0` of `node` unless it has one: a staged
    /// directory renamed onto `.fence`, which fails once `.fence` holds a mark.
    pub fn fence_init(&self, node: &str) -> Result<(), Error> {
        let dir = self.existing(node)?;
        let staged = Staged {
            dir: crate::token::uuid_v4(),
            file: "0".to_string(),
        };
        make_dir(&self.tmp, &staged.dir)?;
        write_new(&self.tmp, &staged.path(), b"")?;
        let target = format!("{node}/{FENCE}");
        match self.tmp.rename_into(&staged.dir, &dir.dir, FENCE) {
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
        let dir = self.existing(node)?;
        let old = from.file_name();
        let Some(fence) = self.fence(node, &dir)? else {
            return Ok(false);
        };
        match fence.rename(&old, &to.file_name()) {
            Ok(()) => {
                *dir.hint.borrow_mut() = Some(to.clone());
                Ok(true)
            }
            Err(ErrorCode::NoEntry) => {
                *dir.hint.borrow_mut() = None;
                Ok(false)
            }
            Err(err) => Err(errors::storage(
                "rename",
                &format!("{node}/{FENCE}/{old}"),
                err,
            )),
        }
    }

    /// `node`'s `.ix`, held open once it exists; created first if `create`.
    fn marks<'a>(&self, node: &str, dir: &'a Node, create: bool) -> Result<Option<&'a Dir>, Error> {
        if let Some(marks) = dir.marks.get() {
            return Ok(Some(marks));
        }
        let path = format!("{node}/{MARKS}");
        if create {
            dir.dir.mkdir(MARKS).map_err(fail("create", &path))?;
        }
        let Some(marks) = dir.dir.open_dir(MARKS).map_err(fail("read", &path))? else {
            return Ok(None);
        };
        Ok(Some(dir.marks.get_or_init(|| marks)))
    }

    /// Makes the staged record findable from ancestor `node`: a hard link
    /// `.ix/<token>` to the record itself (no copy is written).
    pub fn link_marker(&self, node: &str, staged: &Staged) -> Result<(), Error> {
        let dir = self.existing(node)?;
        let marker = format!("{node}/{MARKS}/{}", staged.file);
        let Some(marks) = self.marks(node, &dir, true)? else {
            return Err(errors::storage("link", &marker, ErrorCode::NoEntry));
        };
        self.tmp
            .link_into(&staged.path(), marks, &staged.file)
            .map_err(fail("link", &marker))
    }

    /// Removes the marker of attempt `token` from ancestor `node` (best effort).
    pub fn unmark(&self, node: &str, token: &str) {
        if let Ok(Some(dir)) = self.node(node) {
            if let Ok(Some(marks)) = self.marks(node, &dir, false) {
                let _ = marks.unlink(token);
            }
        }
    }

    /// The resources named by the markers in `node`, each once. A marker is a
    /// hard link to a complete record, so one that does not parse is corrupt
    /// and reported: skipping it could grant over its lock.
    pub fn marked(&self, node: &str) -> Result<BTreeSet<String>, Error> {
        let mut out = BTreeSet::new();
        let Some(dir) = self.node(node)? else {
            return Ok(out);
        };
        let Some(marks) = self.marks(node, &dir, false)? else {
            return Ok(out);
        };
        let path = format!("{node}/{MARKS}");
        for marker in marks.list().map_err(fail("read", &path))? {
            if let Some(grant) = read_record(marks, &marker, &format!("{path}/{marker}"))? {
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
}

/// Reads and parses the record file `path` in `dir` (`shown` names it for
/// people); `None` if it is gone.
fn read_record(dir: &Dir, path: &str, shown: &str) -> Result<Option<Grant>, Error> {
    let Some(bytes) = dir.read(path).map_err(fail("read", shown))? else {
        return Ok(None);
    };
    let text =
        String::from_utf8(bytes).map_err(|_| errors::corrupt(shown, "it is not UTF-8 text"))?;
    record::decode(&text)
        .map(Some)
        .map_err(|why| errors::corrupt(shown, &why))
}

fn open_dir(dir: &Dir, path: &str) -> Result<Dir, Error> {
    dir.open_dir(path)
        .map_err(fail("open", path))?
        .ok_or_else(|| errors::storage("open", path, ErrorCode::NoEntry))
}

fn make_dir(dir: &Dir, path: &str) -> Result<(), Error> {
    dir.mkdir(path).map(|_| ()).map_err(fail("create", path))
}

fn write_new(dir: &Dir, path: &str, bytes: &[u8]) -> Result<(), Error> {
    dir.write_new(path, bytes).map_err(fail("write", path))
}

/// Maps a failed call on `path` to a storage error.
fn fail<'a>(action: &'a str, path: &'a str) -> impl FnOnce(ErrorCode) -> Error + 'a {
    move |code| errors::storage(action, path, code)
}
