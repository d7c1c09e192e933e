//! Directories as capabilities: the WASI descriptor of the preopened lock
//! directory or of a directory opened beneath it, and the filesystem calls
//! hasp makes, every path relative to one such descriptor.
//!
//! Calls go straight to `wasi:filesystem/types` (no libc path resolution, no
//! streams): one WASI call per step. Symlinks are never followed in the last
//! path component; the host keeps every path inside the preopen. A call on a
//! single name in an open directory costs the host one system call; longer
//! paths cost it an open and a close of the parent on top.
//!
//! Nothing is opened before its type is looked at: WASI has no `O_NONBLOCK`
//! and no `O_DIRECTORY` for the host's `open`, so opening a FIFO would block
//! the call for ever, and opening a device may act on it. What stands where
//! a directory or a regular file belongs is refused instead. (A file swapped
//! for a FIFO between the look and the open still blocks that call: only a
//! writer of the lock directory can do that.)

use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};

/// A filesystem call's outcome.
pub type Io<T> = Result<T, ErrorCode>;

/// How often a listing starts over because an entry vanished while read.
const LISTING_RETRIES: usize = 32;

/// The first bytes of a file, or what stands at its name instead.
pub enum Head {
    /// Nothing has that name.
    Missing,
    /// A regular file: its first bytes, at most as many as asked for.
    Bytes(Vec<u8>),
    /// Something that is not a regular file (a symlink, which is not
    /// followed, included): its type. Nothing was opened.
    Not(DescriptorType),
}

/// One open directory: the preopen, or a directory beneath it.
pub struct Dir {
    root: Descriptor,
}

impl Dir {
    /// The preopen the host named `name`, if there is one.
    pub fn preopened(name: &str) -> Option<Dir> {
        let name = name.trim_end_matches('/');
        get_directories()
            .into_iter()
            .find(|(_, n)| n.trim_end_matches('/') == name)
            .map(|(root, _)| Dir { root })
    }

    /// The type of `path` itself (a symlink is reported as one), or `None`.
    pub fn kind(&self, path: &str) -> Io<Option<DescriptorType>> {
        match self.root.stat_at(PathFlags::empty(), path) {
            Ok(stat) => Ok(Some(stat.type_)),
            Err(ErrorCode::NoEntry) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Opens directory `path` (never through a symlink in its last
    /// component), or `None` if nothing has that name. Its type is looked at
    /// first: a symlink fails with `loop`, and anything else that is not a
    /// directory (a FIFO, which would block the open, or a device) with
    /// `not-directory`, without being opened.
    pub fn open_dir(&self, path: &str) -> Io<Option<Dir>> {
        match self.kind(path)? {
            None => return Ok(None),
            Some(DescriptorType::Directory) => {}
            Some(DescriptorType::SymbolicLink) => return Err(ErrorCode::Loop),
            Some(_) => return Err(ErrorCode::NotDirectory),
        }
        match self.root.open_at(
            PathFlags::empty(),
            path,
            OpenFlags::DIRECTORY,
            DescriptorFlags::READ,
        ) {
            Ok(root) => Ok(Some(Dir { root })),
            Err(ErrorCode::NoEntry) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The link count of this directory: 2 plus its subdirectories where
    /// the filesystem counts them (ext4, XFS, tmpfs), 1 on some others.
    pub fn link_count(&self) -> Io<u64> {
        Ok(self.root.stat()?.link_count)
    }

    /// Whether anything (a symlink included) has the name `path`.
    pub fn exists(&self, path: &str) -> Io<bool> {
        Ok(self.kind(path)?.is_some())
    }

    /// Creates directory `path`; false if something already has that name.
    pub fn mkdir(&self, path: &str) -> Io<bool> {
        match self.root.create_directory_at(path) {
            Ok(()) => Ok(true),
            Err(ErrorCode::Exist) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The first `limit` bytes (or fewer) of regular file `path`. Anything
    /// else at that name is reported, not opened (see the module doc).
    pub fn head(&self, path: &str, limit: u64) -> Io<Head> {
        match self.kind(path)? {
            None => return Ok(Head::Missing),
            Some(DescriptorType::RegularFile) => {}
            Some(other) => return Ok(Head::Not(other)),
        }
        let file = match self.root.open_at(
            PathFlags::empty(),
            path,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        ) {
            Ok(file) => file,
            Err(ErrorCode::NoEntry) => return Ok(Head::Missing),
            Err(err) => return Err(err),
        };
        // Replaced between the look and the open: judge what was opened.
        match file.get_type()? {
            DescriptorType::RegularFile => {}
            other => return Ok(Head::Not(other)),
        }
        let mut out = Vec::new();
        while (out.len() as u64) < limit {
            let (chunk, end) = file.read(limit - out.len() as u64, out.len() as u64)?;
            out.extend_from_slice(&chunk);
            if end || chunk.is_empty() {
                break;
            }
        }
        Ok(Head::Bytes(out))
    }

    #[cfg(feature = "process")]
    /// Opens file `path` for reading and writing, creating it (empty) if it
    /// is missing and `create` is set, never truncating it, never following
    /// a symlink there.
    pub fn open_file(&self, path: &str, create: bool) -> Io<Descriptor> {
        let flags = if create {
            OpenFlags::CREATE
        } else {
            OpenFlags::empty()
        };
        self.root.open_at(
            PathFlags::empty(),
            path,
            flags,
            DescriptorFlags::READ | DescriptorFlags::WRITE,
        )
    }

    /// Creates file `path`, which must not exist, holding `bytes`. If the
    /// bytes cannot be written (no space left), the file is removed again.
    pub fn write_new(&self, path: &str, bytes: &[u8]) -> Io<()> {
        let file = self.root.open_at(
            PathFlags::empty(),
            path,
            OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
            DescriptorFlags::WRITE,
        )?;
        let mut written = 0;
        while written < bytes.len() {
            match file.write(&bytes[written..], written as u64) {
                Ok(0) => {
                    drop(file);
                    let _ = self.unlink(path);
                    return Err(ErrorCode::InsufficientSpace);
                }
                Ok(n) => written += n as usize,
                Err(err) => {
                    drop(file);
                    let _ = self.unlink(path);
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Renames `from` to `to` (replacing a file, or an empty directory).
    pub fn rename(&self, from: &str, to: &str) -> Io<()> {
        self.rename_into(from, self, to)
    }

    /// Renames `from` here to `to` in directory `dir` (replacing a file, or
    /// an empty directory).
    pub fn rename_into(&self, from: &str, dir: &Dir, to: &str) -> Io<()> {
        self.root.rename_at(from, &dir.root, to)
    }

    /// Makes `to` a second name of file `from`, both here; fails with
    /// `exist` if `to` is taken (never replaces it).
    pub fn link(&self, from: &str, to: &str) -> Io<()> {
        self.root.link_at(PathFlags::empty(), from, &self.root, to)
    }

    /// Removes file `path`; false if it was not there.
    pub fn unlink(&self, path: &str) -> Io<bool> {
        match self.root.unlink_file_at(path) {
            Ok(()) => Ok(true),
            Err(ErrorCode::NoEntry) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Removes the empty directory `path`; false if it was not there.
    pub fn rmdir(&self, path: &str) -> Io<bool> {
        match self.root.remove_directory_at(path) {
            Ok(()) => Ok(true),
            Err(ErrorCode::NoEntry) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The entries in directory `path` with their types, or `None` if it
    /// does not exist; listed as [`Dir::names`] lists them.
    pub fn entries(&self, path: &str) -> Io<Option<Vec<(String, DescriptorType)>>> {
        for _ in 0..LISTING_RETRIES {
            let Some(dir) = self.open_dir(path)? else {
                return Ok(None);
            };
            match dir.list_once() {
                Err(ErrorCode::NoEntry) => continue,
                other => return other.map(Some),
            }
        }
        Err(ErrorCode::Busy)
    }

    /// The names in directory `path`, or `None` if it does not exist. A
    /// listing during which an entry vanished starts over, so every entry
    /// present throughout is in the result. `Busy` if it never settles.
    pub fn names(&self, path: &str) -> Io<Option<Vec<String>>> {
        for _ in 0..LISTING_RETRIES {
            let Some(dir) = self.open_dir(path)? else {
                return Ok(None);
            };
            match dir.list_once() {
                Err(ErrorCode::NoEntry) => continue,
                other => return other.map(|e| Some(e.into_iter().map(|(n, _)| n).collect())),
            }
        }
        Err(ErrorCode::Busy)
    }

    /// The names in this directory, as [`Dir::names`] lists them.
    pub fn list(&self) -> Io<Vec<String>> {
        for _ in 0..LISTING_RETRIES {
            match self.list_once() {
                Err(ErrorCode::NoEntry) => continue,
                other => return other.map(|e| e.into_iter().map(|(n, _)| n).collect()),
            }
        }
        Err(ErrorCode::Busy)
    }

    /// One pass over this directory; `NoEntry` if an entry vanished meanwhile.
    fn list_once(&self) -> Io<Vec<(String, DescriptorType)>> {
        let entries = self.root.read_directory()?;
        let mut out = Vec::new();
        while let Some(entry) = entries.read_directory_entry()? {
            out.push((entry.name, entry.type_));
        }
        Ok(out)
    }
}

/// What a failed call means, for people. WASI reports some failures only
/// as `io` (a read-only filesystem, too many open files, a disk quota): the
/// hasp host names those (see `host/src/error.rs`).
pub fn reason(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Access => "permission denied",
        ErrorCode::WouldBlock => "it would block",
        ErrorCode::Already => "already in progress",
        ErrorCode::BadDescriptor => "bad file descriptor",
        ErrorCode::Busy => "kept changing while it was read",
        ErrorCode::Deadlock => "it would deadlock",
        ErrorCode::Quota => "disk quota exceeded",
        ErrorCode::Exist => "already exists",
        ErrorCode::FileTooLarge => "file too large",
        ErrorCode::IllegalByteSequence => "illegal byte sequence",
        ErrorCode::InProgress => "in progress",
        ErrorCode::Interrupted => "interrupted",
        ErrorCode::Invalid => "invalid argument",
        ErrorCode::Io => IO_ERROR,
        ErrorCode::IsDirectory => "is a directory",
        ErrorCode::Loop => "a symlink is in the way (symlinks are never followed)",
        ErrorCode::TooManyLinks => "too many links",
        ErrorCode::MessageSize => "message too large",
        ErrorCode::NameTooLong => "file name too long",
        ErrorCode::NoDevice => "no such device",
        ErrorCode::NoEntry => "no such file or directory",
        ErrorCode::NoLock => "no locks available",
        ErrorCode::InsufficientMemory => "out of memory",
        ErrorCode::InsufficientSpace => "no space left on the device",
        ErrorCode::NotDirectory => "not a directory",
        ErrorCode::NotEmpty => "directory not empty",
        ErrorCode::NotRecoverable => "state not recoverable",
        ErrorCode::Unsupported => "not supported by this filesystem",
        ErrorCode::NoTty => "not a terminal",
        ErrorCode::NoSuchDevice => "no such device or address",
        ErrorCode::Overflow => "value too large",
        ErrorCode::NotPermitted => "operation not permitted",
        ErrorCode::Pipe => "broken pipe",
        ErrorCode::ReadOnly => "read-only filesystem",
        ErrorCode::InvalidSeek => "invalid seek",
        ErrorCode::TextFileBusy => "text file busy",
        ErrorCode::CrossDevice => "crosses a filesystem boundary",
    }
}

/// The reason given for WASI's catch-all `io` error.
pub const IO_ERROR: &str = "input/output error";

/// What a file of type `kind` is, for people: "a FIFO", "a directory"...
pub fn what(kind: DescriptorType) -> &'static str {
    match kind {
        DescriptorType::RegularFile => "a regular file",
        DescriptorType::Directory => "a directory",
        DescriptorType::SymbolicLink => "a symlink",
        DescriptorType::Fifo => "a FIFO",
        DescriptorType::CharacterDevice => "a character device",
        DescriptorType::BlockDevice => "a block device",
        DescriptorType::Socket => "a socket",
        // What wasmtime-wasi calls a FIFO or a socket on Unix.
        DescriptorType::Unknown => "a special file (a FIFO or a socket)",
    }
}
