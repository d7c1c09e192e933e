//! The filesystem steps the registry is built from, all inside the lock
//! directory. See docs/FORMAT.md for the layout and for why these steps
//! never double-grant.
//!
//! A node's state is the name of the one file in its `.lock` directory, and
//! every change of it is one `rename` of that file ([`Disk::change`]), which
//! fails when the name it starts from is gone. So a change made from a stale
//! reading simply fails, and the caller reads again.

use crate::dir::{Dir, Head};
use crate::errors;
use crate::hasp::lock::types::Error;
use crate::name;
use crate::record::{self, Lost, Seen, State};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use wasip2::filesystem::types::{DescriptorType, ErrorCode};

use crate::name::NODES;
/// Staging area for the first state of a new node.
pub const TMP: &str = "tmp";
/// File naming the layout version of the lock directory.
pub const FORMAT: &str = "FORMAT";
/// The content of [`FORMAT`] for this layout.
pub const FORMAT_LINE: &str = "hasp-lock-dir 3";
/// The layout before leases, which this one extends: a directory that says
/// it is upgraded in place (its states are valid format 3 states).
const FORMAT_V2_LINE: &str = "hasp-lock-dir 2";
/// How much of `FORMAT` is read: more than any version's line, never more
/// (a `FORMAT` replaced by a huge file is refused for what it begins with).
const FORMAT_READ: u64 = 64;

/// How many records of lost leases a node keeps (the newest).
const LOST_KEPT: usize = 8;

/// Inside a node: the directory holding its one state file.
const LOCK: &str = ".lock";

/// How many nodes a registry keeps open at most (two descriptors each);
/// past that, opening one lets another go. Several registries share a process
/// (`hasp serve` runs one per worker).
const OPEN_NODES: usize = 128;

/// The lock directory.
pub struct Disk {
    dir: Dir,
    /// `tmp/`, held open.
    tmp: Dir,
    /// Nodes held open, by node path (see [`Node`]).
    nodes: RefCell<HashMap<String, Rc<Node>, Fnv>>,
    /// A xorshift state: where to look for a node to let go.
    dice: Cell<u64>,
}

/// A node directory and its `.lock`, held open across calls. Holding them
/// is safe because neither is ever removed or replaced once it exists.
/// Nothing here is lock state: every decision is a rename on the disk.
struct Node {
    dir: Dir,
    lock: Dir,
    /// The state file name this registry saw or wrote last, which may be
    /// stale: it is looked up, or renamed from, before it counts.
    hint: RefCell<Option<String>>,
    /// Looked up since it was last looked at for letting go.
    used: Cell<bool>,
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
        match format(&dir)? {
            Some(line) if line == FORMAT_LINE => {}
            Some(line) if line == FORMAT_V2_LINE => upgrade(&dir)?,
            Some(line) => return Err(errors::wrong_format(FORMAT, &line)),
            None => {
                layout_dir(&dir, TMP)?;
                let staged = format!("{TMP}/{}.{FORMAT}", crate::token::uuid_v4());
                write_new(&dir, &staged, format!("{FORMAT_LINE}\n").as_bytes())?;
                // A link never replaces: if another process made `FORMAT`
                // meanwhile, its content is checked instead.
                let linked = dir.link(&staged, FORMAT);
                let _ = dir.unlink(&staged);
                match linked {
                    Ok(()) => {}
                    Err(ErrorCode::Exist) => match format(&dir)? {
                        Some(line) if line == FORMAT_LINE => {}
                        other => {
                            return Err(errors::wrong_format(
                                FORMAT,
                                other.as_deref().unwrap_or(""),
                            ))
                        }
                    },
                    Err(err) => return Err(errors::storage("create", FORMAT, err)),
                }
            }
        }
        layout_dir(&dir, NODES)?;
        layout_dir(&dir, TMP)?;
        let tmp = open_dir(&dir, TMP)?;
        Ok(Disk {
            dir,
            tmp,
            nodes: RefCell::new(HashMap::default()),
            dice: Cell::new(0x9e37_79b9_7f4a_7c15),
        })
    }

    /// The node at `path` with its `.lock`, held open; `None` if either is
    /// missing (a node made but never locked has no `.lock` yet).
    fn node(&self, path: &str) -> Result<Option<Rc<Node>>, Error> {
        if let Some(node) = self.nodes.borrow().get(path) {
            node.used.set(true);
            return Ok(Some(node.clone()));
        }
        let opened = match self.open_node(path) {
            // Perhaps out of descriptors: let go of the held ones, try again.
            Err(_) if !self.nodes.borrow().is_empty() => {
                self.forget();
                self.open_node(path)
            }
            other => other,
        };
        let Some(node) = opened.map_err(|(at, err)| self.not_a_node(&at, err))? else {
            return Ok(None);
        };
        let node = Rc::new(node);
        let mut nodes = self.nodes.borrow_mut();
        if nodes.len() >= OPEN_NODES {
            self.let_one_go(&mut nodes);
        }
        nodes.insert(path.to_string(), node.clone());
        Ok(Some(node))
    }

    /// Opens the node at `path` and its `.lock`; on failure, the path that
    /// failed and why.
    fn open_node(&self, path: &str) -> Result<Option<Node>, (String, ErrorCode)> {
        let Some(dir) = self.dir.open_dir(path).map_err(|e| (path.to_string(), e))? else {
            return Ok(None);
        };
        let Some(lock) = dir
            .open_dir(LOCK)
            .map_err(|e| (format!("{path}/{LOCK}"), e))?
        else {
            return Ok(None);
        };
        Ok(Some(Node {
            dir,
            lock,
            hint: RefCell::new(None),
            used: Cell::new(true),
        }))
    }

    /// Makes room for one more node: lets one go, not all, so that a
    /// working set a little over [`OPEN_NODES`] costs a reopen now and then
    /// rather than every node's reopen (and a listing for its state) after
    /// each clear. The one is found at random places, where the first not
    /// looked up since it was last looked at here goes (a second chance,
    /// near enough to least recently used), else the last one looked at:
    /// nodes of resources no longer used go first, wherever they sit in
    /// the map.
    fn let_one_go(&self, nodes: &mut HashMap<String, Rc<Node>, Fnv>) {
        let mut goes = None;
        for _ in 0..4 {
            let mut x = self.dice.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.dice.set(x);
            let Some((path, node)) = nodes.iter().nth(x as usize % nodes.len()) else {
                break;
            };
            goes = Some(path.clone());
            if !node.used.replace(false) {
                break;
            }
        }
        if let Some(path) = goes {
            nodes.remove(&path);
        }
    }

    /// Lets go of every node held open. Called when a node was found gone,
    /// which the layout rules out but an operator may do, and after any
    /// failed call (out of descriptors, say).
    pub fn forget(&self) {
        self.nodes.borrow_mut().clear();
    }

    /// Why `path` could not be opened as a directory, for people: names the
    /// first level of it that is a symlink or not a directory. Lets go of
    /// the nodes held open first: the cause may be too many open files.
    fn not_a_node(&self, path: &str, err: ErrorCode) -> Error {
        self.forget();
        let ends = path.match_indices('/').map(|(at, _)| at);
        for level in ends.chain([path.len()]).map(|end| &path[..end]) {
            match self.dir.kind(level) {
                Ok(Some(DescriptorType::Directory)) => {}
                Ok(Some(DescriptorType::SymbolicLink)) => return errors::symlink(level),
                Ok(Some(_)) => return errors::storage("use", level, ErrorCode::NotDirectory),
                Ok(None) | Err(_) => break,
            }
        }
        errors::storage("open", path, err)
    }

    /// The last state this registry saw or wrote on `node`, unchecked: only
    /// good to rename from (which checks it).
    pub fn hint(&self, node: &str) -> Option<Seen> {
        let held = self.nodes.borrow().get(node).cloned()?;
        let name = held.hint.borrow().clone()?;
        let state = record::decode(&name).ok()?;
        Some(Seen { name, state })
    }

    /// The state of `node` as it is on disk now, or `None` for a node that
    /// was never locked.
    pub fn read(&self, node: &str) -> Result<Option<Seen>, Error> {
        for fresh in [false, true] {
            let Some(held) = self.node(node)? else {
                return Ok(None);
            };
            let hint = held.hint.borrow().clone();
            if let Some(name) = hint {
                match held.lock.exists(&name) {
                    Ok(true) => return seen(node, name).map(Some),
                    Ok(false) => {}
                    Err(err) => {
                        return Err(errors::storage(
                            "inspect",
                            &format!("{node}/{LOCK}/{name}"),
                            err,
                        ))
                    }
                }
            }
            let path = || format!("{node}/{LOCK}");
            let mut names = match held.lock.list() {
                Ok(names) => names,
                // A host that keeps a descriptor as a path (jco's
                // preview2-shim in Node) cannot list a `.lock` removed while
                // held at all, where wasmtime lists it as empty (below):
                // the same case, so let go and look again.
                Err(ErrorCode::Busy) if !fresh => {
                    self.forget();
                    continue;
                }
                Err(err) => return Err(errors::storage("read", &path(), err)),
            };
            match names.len() {
                1 => {
                    let name = names.pop().unwrap_or_default();
                    *held.hint.borrow_mut() = Some(name.clone());
                    return seen(node, name).map(Some);
                }
                // A `.lock` is never empty: this one was removed while held
                // open. Let go of everything and look again.
                0 if !fresh => self.forget(),
                0 => return Err(errors::corrupt(&path(), "it is empty")),
                _ => return Err(errors::corrupt(&path(), "it holds more than one file")),
            }
        }
        Err(errors::busy(node))
    }

    /// What the state of `node` says now, as [`Disk::read`] finds it but
    /// without copying its file name when the hint is still current.
    pub fn state(&self, node: &str) -> Result<Option<State>, Error> {
        if let Some(held) = self.node(node)? {
            let hint = held.hint.borrow();
            if let Some(name) = hint.as_deref() {
                if held.lock.exists(name) == Ok(true) {
                    if let Ok(state) = record::decode(name) {
                        return Ok(Some(state));
                    }
                }
            }
        }
        // No current hint, or a failure: the full read says why.
        Ok(self.read(node)?.map(|seen| seen.state))
    }

    /// The state of `node` read without holding anything open, for walks
    /// over many nodes; `None` for a node that was never locked.
    fn peek(&self, node: &str) -> Result<Option<Seen>, Error> {
        let path = format!("{node}/{LOCK}");
        let Some(mut names) = self.dir.names(&path).map_err(fail("read", &path))? else {
            return Ok(None);
        };
        match names.len() {
            1 => seen(node, names.pop().unwrap_or_default()).map(Some),
            0 => Err(errors::corrupt(&path, "it is empty")),
            _ => Err(errors::corrupt(&path, "it holds more than one file")),
        }
    }

    /// Renames `node`'s state file from `from` to `to`: the one way a state
    /// changes. False, changing nothing, when the state is no longer `from`.
    pub fn change(&self, node: &str, from: &str, to: &str) -> Result<bool, Error> {
        let Some(held) = self.node(node)? else {
            return Ok(false);
        };
        match held.lock.rename(from, to) {
            Ok(()) => {
                *held.hint.borrow_mut() = Some(to.to_string());
                Ok(true)
            }
            Err(ErrorCode::NoEntry) => {
                *held.hint.borrow_mut() = None;
                Ok(false)
            }
            Err(err) => Err(errors::storage(
                "rename",
                &format!("{node}/{LOCK}/{from}"),
                err,
            )),
        }
    }

    /// Step 2 of a lock: [`Disk::change`]. On disk the related locks are
    /// read afterwards, each when the check gets to it (`parents` and
    /// `children` say which will be: a store reads them in the same step).
    /// `None` when the state is no longer `from`.
    pub fn commit(
        &self,
        node: &str,
        from: &str,
        to: &str,
        _parents: bool,
        _children: bool,
    ) -> Result<Option<Snapshot>, Error> {
        Ok(self.change(node, from, to)?.then_some(Snapshot))
    }

    /// The state of the related node `node` for the check after `commit`:
    /// read now.
    pub fn related(&self, _snapshot: &Snapshot, node: &str) -> Result<Option<State>, Error> {
        self.state(node)
    }

    /// Hands every node below `node` (not `node` itself) and its state to
    /// `visit`, a parent before its children, until `visit` breaks.
    pub fn below<F>(&self, node: &str, _snapshot: &Snapshot, visit: &mut F) -> Result<Flow, Error>
    where
        F: FnMut(&str, Option<Seen>) -> Result<Flow, Error>,
    {
        self.walk(node, visit)
    }

    /// [`Disk::below`]: lists each level, reads each node's state.
    fn walk<F>(&self, node: &str, visit: &mut F) -> Result<Flow, Error>
    where
        F: FnMut(&str, Option<Seen>) -> Result<Flow, Error>,
    {
        for (child, _) in self.children(node)? {
            if visit(&child, self.peek(&child)?)?.is_break() || self.walk(&child, visit)?.is_break()
            {
                return Ok(Flow::Break(()));
            }
        }
        Ok(Flow::Continue(()))
    }

    /// Where the state `name` of `node` is, for messages: its file.
    pub fn state_path(&self, node: &str, name: &str) -> String {
        format!("{node}/{LOCK}/{name}")
    }

    /// What a store's host is told of a lease that refused a lock (see
    /// `Kv::changes_at`): on disk, nothing; waiters look again on their own.
    pub fn changes_at(&self, _at_ms: u64) {}

    /// Makes the node at `path` and each missing level above it (refusing
    /// symlinks), and gives each level that has none its first state, `0`:
    /// then every ancestor of a node has a state to read and hint.
    pub fn make_node(&self, path: &str) -> Result<(), Error> {
        let mut end = NODES.len();
        while end < path.len() {
            end = path[end + 1..]
                .find('/')
                .map_or(path.len(), |at| end + 1 + at);
            let level = &path[..end];
            let mut kind = self.dir.kind(level).map_err(fail("inspect", level))?;
            if kind.is_none() && self.dir.mkdir(level).map_err(fail("create", level))? {
                kind = Some(DescriptorType::Directory);
            } else if kind.is_none() {
                kind = self.dir.kind(level).map_err(fail("inspect", level))?;
            }
            match kind {
                Some(DescriptorType::Directory) => self.first_state(level)?,
                Some(DescriptorType::SymbolicLink) => return Err(errors::symlink(level)),
                Some(_) => return Err(errors::storage("use", level, ErrorCode::NotDirectory)),
                None => return Err(errors::storage("create", level, ErrorCode::NoEntry)),
            }
        }
        Ok(())
    }

    /// Gives the node directory `path` its first state, `0`, unless it has a
    /// `.lock`: a staged `.lock` holding `0`, renamed into place. A directory
    /// rename onto a non-empty directory fails, so only the first counts.
    fn first_state(&self, path: &str) -> Result<(), Error> {
        let lock = format!("{path}/{LOCK}");
        match self.dir.kind(&lock).map_err(fail("inspect", &lock))? {
            None => {}
            Some(DescriptorType::Directory) => return Ok(()),
            Some(DescriptorType::SymbolicLink) => return Err(errors::symlink(&lock)),
            Some(other) => return Err(errors::wrong_kind(&lock, other, "a directory")),
        }
        let node = open_dir(&self.dir, path)?;
        let staged = crate::token::uuid_v4();
        let first = format!("{staged}/{}", record::free_name(0));
        // Named in messages by their path in the lock directory.
        let in_tmp = |name: &str| format!("{TMP}/{name}");
        self.tmp
            .mkdir(&staged)
            .map_err(|err| errors::storage("create", &in_tmp(&staged), err))?;
        let moved = self
            .tmp
            .write_new(&first, b"")
            .map_err(|err| errors::storage("write", &in_tmp(&first), err))
            .and_then(|()| {
                self.tmp
                    .rename_into(&staged, &node, LOCK)
                    .map_err(|err| errors::storage("rename into", &lock, err))
            });
        if moved.is_ok() {
            // It is the node's `.lock` now: nothing is left in `tmp/`.
            return Ok(());
        }
        let _ = self.tmp.unlink(&first);
        let _ = self.tmp.rmdir(&staged);
        // Lost to another process that gave the node its first state (a
        // directory rename onto a non-empty `.lock` fails): that is fine.
        match self.dir.kind(&lock) {
            Ok(Some(DescriptorType::Directory)) => Ok(()),
            _ => moved,
        }
    }

    /// Whether `node` certainly has no child nodes: its link count says it
    /// has exactly one subdirectory, its `.lock`. False when unsure.
    pub fn is_leaf(&self, node: &str) -> Result<bool, Error> {
        let Some(held) = self.node(node)? else {
            return Ok(false);
        };
        let count = held.dir.link_count().map_err(fail("inspect", node))?;
        Ok(count == 3)
    }

    /// Records in `node` that the lease of `held` ran out and the lock was
    /// taken over, so that its owner learns why its lock is gone; keeps the
    /// newest [`LOST_KEPT`]. Only for messages: a record that could not be
    /// written changes no decision.
    pub fn record_lost(&self, node: &str, held: &record::Held, taker: Option<&str>) {
        let same = taker.is_some() && taker == held.client.as_deref();
        let _ = write_new(
            &self.dir,
            &format!("{node}/{}", record::lost_name(held, same)),
            b"",
        );
        let Ok(mut lost) = self.lost(node) else {
            return;
        };
        if lost.len() > LOST_KEPT {
            lost.sort_by_key(|l| std::cmp::Reverse(l.fencing));
            for old in &lost[LOST_KEPT..] {
                let _ = self.dir.unlink(&format!("{node}/{}", old.name));
            }
        }
    }

    /// The records of lost leases kept in `node`.
    pub fn lost(&self, node: &str) -> Result<Vec<Lost>, Error> {
        let names = self.dir.names(node).map_err(fail("read", node))?;
        Ok(names
            .unwrap_or_default()
            .into_iter()
            .filter_map(Lost::decode)
            .collect())
    }

    /// The child nodes of `node`: their node paths and resource segments.
    fn children(&self, node: &str) -> Result<Vec<(String, String)>, Error> {
        let entries = self.dir.entries(node).map_err(fail("read", node))?;
        let mut out = Vec::new();
        for (entry, kind) in entries.unwrap_or_default() {
            // `.lock`, and anything hasp did not make, is not a node.
            let Some(segment) = name::decode_segment(&entry) else {
                continue;
            };
            if kind == DescriptorType::Directory {
                out.push((format!("{node}/{entry}"), segment));
            }
        }
        Ok(out)
    }
}

/// What a commit read with it: on disk, nothing (related nodes are read
/// when checked).
pub struct Snapshot;

impl Snapshot {
    /// Nothing read: every node is read when asked for.
    pub fn none() -> Snapshot {
        Snapshot
    }
}

/// Whether a walk goes on.
pub type Flow = std::ops::ControlFlow<()>;

/// FNV-1a: the node map's keys are paths this process made from names it
/// validated, looked up several times a call; SipHash's defence against
/// chosen keys costs more than it buys here, with at most [`OPEN_NODES`]
/// entries.
#[derive(Clone, Copy, Default)]
struct Fnv;

impl std::hash::BuildHasher for Fnv {
    type Hasher = FnvHasher;
    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Upgrades a format 2 directory to format 3 in place: format 3 only adds
/// leases to the held names, so every state stays as it is; `FORMAT` is
/// replaced (by a rename, so it is never torn) and format 2 hasps then
/// refuse the directory instead of misreading a lease.
fn upgrade(dir: &Dir) -> Result<(), Error> {
    layout_dir(dir, TMP)?;
    let staged = format!("{TMP}/{}.{FORMAT}", crate::token::uuid_v4());
    write_new(dir, &staged, format!("{FORMAT_LINE}\n").as_bytes())?;
    dir.rename(&staged, FORMAT).map_err(|err| {
        let _ = dir.unlink(&staged);
        errors::storage("upgrade", FORMAT, err)
    })
}

/// Parses the state file `name` of `node`.
fn seen(node: &str, name: String) -> Result<Seen, Error> {
    match record::decode(&name) {
        Ok(state) => Ok(Seen { name, state }),
        Err(why) => Err(errors::corrupt(&format!("{node}/{LOCK}/{name}"), &why)),
    }
}

fn open_dir(dir: &Dir, path: &str) -> Result<Dir, Error> {
    dir.open_dir(path)
        .map_err(fail("open", path))?
        .ok_or_else(|| errors::storage("open", path, ErrorCode::NoEntry))
}

/// The first line of `FORMAT` (of its first [`FORMAT_READ`] bytes), or
/// `None` if there is no `FORMAT`. Anything but a regular file there is
/// refused without being opened: a FIFO would block the read for ever, a
/// device would never end it.
fn format(dir: &Dir) -> Result<Option<String>, Error> {
    match dir
        .head(FORMAT, FORMAT_READ)
        .map_err(fail("read", FORMAT))?
    {
        Head::Missing => Ok(None),
        Head::Bytes(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            Ok(Some(text.lines().next().unwrap_or("").to_string()))
        }
        Head::Not(DescriptorType::SymbolicLink) => Err(errors::symlink(FORMAT)),
        Head::Not(kind) => Err(errors::wrong_kind(FORMAT, kind, "a regular file")),
    }
}

/// Makes the layout's directory `name` unless it is there. A symlink, or
/// anything else that is not a directory, is refused.
fn layout_dir(dir: &Dir, name: &str) -> Result<(), Error> {
    let mut kind = dir.kind(name).map_err(fail("inspect", name))?;
    if kind.is_none() {
        if dir.mkdir(name).map_err(fail("create", name))? {
            return Ok(());
        }
        // Made meanwhile, by another process.
        kind = dir.kind(name).map_err(fail("inspect", name))?;
    }
    match kind {
        Some(DescriptorType::Directory) => Ok(()),
        Some(DescriptorType::SymbolicLink) => Err(errors::symlink(name)),
        Some(other) => Err(errors::wrong_kind(name, other, "a directory")),
        None => Err(errors::storage("create", name, ErrorCode::NoEntry)),
    }
}

fn write_new(dir: &Dir, path: &str, bytes: &[u8]) -> Result<(), Error> {
    dir.write_new(path, bytes).map_err(fail("write", path))
}

/// Maps a failed call on `path` to a storage error.
fn fail<'a>(action: &'a str, path: &'a str) -> impl FnOnce(ErrorCode) -> Error + 'a {
    move |code| errors::storage(action, path, code)
}
