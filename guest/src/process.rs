//! Lock files for processes: which file, what the holder records in it, and
//! what a refused locker is told. The OS lock itself comes from the host's
//! `hasp:lock/file-lock`.
//!
//! The record is one line, readable with `cat`:
//!
//! ```text
//! 4242 build-host 1795450452162 ./deploy.sh --prod
//! ```
//!
//! pid, host name, start time (milliseconds since the Unix epoch), then the
//! command as the rest of the line. Only an exclusive holder writes it; the
//! file stays behind after release (never unlinked, so there is no inode
//! race), and the next exclusive holder overwrites it.

use crate::dir::Dir;
use crate::errors;
use crate::exports::hasp::lock::process_lock::{
    Guest, GuestLockFile, LockFile as Handle, LockMode, Owner,
};
use crate::hasp::lock::file_lock::{File as OsLock, LockError};
use crate::hasp::lock::types::Error;
use std::cell::RefCell;
use wasip2::filesystem::types::{Descriptor, DescriptorType, ErrorCode};

/// Longest accepted lock file path, in bytes.
const MAX_PATH: usize = 1024;
/// Entries of a hasp lock directory that are not lock files.
const RESERVED: [&str; 3] = ["FORMAT", "nodes", "tmp"];
/// Longest owner record read back.
const MAX_RECORD: u64 = 8 * 1024;

struct Component;

impl Guest for Component {
    type LockFile = LockFile;
}

/// An open lock file: the host's handle for the OS lock, and our own WASI
/// descriptor of the same file for the owner record.
pub struct LockFile {
    lock: OsLock,
    file: Descriptor,
    path: String,
    /// The last owner record written through this handle, kept with the
    /// owner it was made for: a holder that locks again (within the same
    /// millisecond, or with nothing else changed) reuses it as it is.
    record: RefCell<Record>,
}

/// An owner record and whom it was made for.
#[derive(Default)]
struct Record {
    owner: Option<Owner>,
    line: Vec<u8>,
}

impl Record {
    /// The record of `owner`, made anew only when the owner changed.
    fn of(&mut self, owner: Owner) -> &[u8] {
        let same = self.owner.as_ref().is_some_and(|had| {
            had.pid == owner.pid
                && had.since_ms == owner.since_ms
                && had.host == owner.host
                && had.command == owner.command
        });
        if !same {
            write_owner_line(&owner, &mut self.line);
            self.owner = Some(owner);
        }
        &self.line
    }
}

impl GuestLockFile for LockFile {
    fn open(dir: String, path: String) -> Result<Handle, Error> {
        let shown = path.clone();
        match LockFile::new(&dir, path, true)? {
            Some(file) => Ok(Handle::new(file)),
            None => Err(errors::io_failure(
                "open",
                &shown,
                "it vanished while it was created",
            )),
        }
    }

    fn acquire(&self, mode: LockMode, timeout_ms: Option<u64>, owner: Owner) -> Result<(), Error> {
        // An exclusive holder records itself, in the same host call.
        let mut record = self.record.borrow_mut();
        let content = (mode == LockMode::Exclusive).then(|| record.of(owner));
        match self.lock.lock(mode, timeout_ms, content) {
            Ok(()) => Ok(()),
            Err(LockError::WouldBlock) => Err(self.held()),
            Err(err) => Err(failure(&self.path, "lock", err)),
        }
    }

    fn release(&self) -> Result<(), Error> {
        self.lock
            .unlock()
            .map_err(|e| failure(&self.path, "unlock", e))
    }

    fn who(dir: String, path: String) -> Result<Option<Option<Owner>>, Error> {
        match LockFile::new(&dir, path, false)? {
            Some(file) => file.holder(),
            None => Ok(None),
        }
    }

    fn holder(&self) -> Result<Option<Option<Owner>>, Error> {
        match self.lock.held() {
            Ok(None) => Ok(None),
            Ok(Some(_)) => Ok(Some(self.exclusive_owner()?)),
            Err(err) => Err(failure(&self.path, "inspect", err)),
        }
    }
}

impl LockFile {
    /// Opens the lock file `path` in preopen `dir`; `None` if it is missing
    /// and not to be created. Refuses what is not a regular file inside.
    fn new(dir: &str, path: String, create: bool) -> Result<Option<LockFile>, Error> {
        check_path(&path)?;
        let Some(root) = Dir::preopened(dir) else {
            return Err(errors::io_failure(
                "open",
                dir,
                "no such preopened directory (the host must grant it)",
            ));
        };
        // Walk down to the file's directory one level at a time, looking at
        // each before opening it: never through a symlink (which may lead
        // anywhere in the lock directory), never into a FIFO or device.
        let (parents, name) = match path.rsplit_once('/') {
            Some((parents, name)) => (Some(parents), name),
            None => (None, path.as_str()),
        };
        let mut below: Option<Dir> = None;
        let mut level_end = 0;
        for segment in parents.into_iter().flat_map(|p| p.split('/')) {
            level_end += segment.len();
            let level = &path[..level_end];
            level_end += 1;
            let here = below.as_ref().unwrap_or(&root);
            match here
                .kind(segment)
                .map_err(|e| errors::storage("inspect", level, e))?
            {
                Some(DescriptorType::Directory) => {}
                None if !create => return Ok(None),
                None => return Err(errors::storage("open", &path, ErrorCode::NoEntry)),
                Some(kind) => return Err(errors::not_a_lock_file_directory(&path, level, kind)),
            }
            below = match here.open_dir(segment) {
                Ok(Some(dir)) => Some(dir),
                Ok(None) if !create => return Ok(None),
                Ok(None) => return Err(errors::storage("open", &path, ErrorCode::NoEntry)),
                Err(e) => return Err(errors::storage("open", level, e)),
            };
        }
        let here = below.as_ref().unwrap_or(&root);
        let what = |kind| match kind {
            DescriptorType::RegularFile => None,
            other => Some(crate::dir::what(other)),
        };
        // Look before opening: opening a FIFO or a device may block or act.
        match here
            .kind(name)
            .map_err(|e| errors::storage("inspect", &path, e))?
        {
            None if !create => return Ok(None),
            Some(kind) => {
                if let Some(bad) = what(kind) {
                    return Err(errors::not_a_regular_file(&path, bad));
                }
            }
            None => {}
        }
        let file = match here.open_file(name, create) {
            Ok(file) => file,
            Err(ErrorCode::NoEntry) if !create => return Ok(None),
            Err(e) => return Err(errors::storage("open", &path, e)),
        };
        let kind = file
            .get_type()
            .map_err(|e| errors::storage("inspect", &path, e))?;
        if let Some(bad) = what(kind) {
            return Err(errors::not_a_regular_file(&path, bad));
        }
        let lock = match OsLock::open(dir, &path, create) {
            Ok(lock) => lock,
            Err(LockError::NoSuchFile) => return Ok(None),
            Err(e) => return Err(failure(&path, "open", e)),
        };
        Ok(Some(LockFile {
            lock,
            file,
            path,
            record: RefCell::default(),
        }))
    }

    /// The refusal for a lock somebody else holds, naming them if known.
    fn held(&self) -> Error {
        match self.exclusive_owner() {
            Ok(Some(o)) => errors::file_held(&self.path, Some((o.pid, &o.host, &o.command))),
            _ => errors::file_held(&self.path, None),
        }
    }

    /// The recorded owner, if the lock is held exclusively (a shared holder
    /// leaves the previous exclusive holder's record in place).
    fn exclusive_owner(&self) -> Result<Option<Owner>, Error> {
        if !matches!(self.lock.held(), Ok(Some(LockMode::Exclusive))) {
            return Ok(None);
        }
        let (bytes, _) = self
            .file
            .read(MAX_RECORD, 0)
            .map_err(|e| errors::storage("read", &self.path, e))?;
        Ok(parse_owner(&String::from_utf8_lossy(&bytes)))
    }
}

/// Writes into `out` the one-line record of an exclusive holder:
/// `pid host since-ms command`, the host's whitespace runs as one `-` (it
/// is one field), the command's control characters as spaces (it is one
/// line).
fn write_owner_line(owner: &Owner, out: &mut Vec<u8>) {
    out.clear();
    push_decimal(out, u64::from(owner.pid));
    out.push(b' ');
    for (i, word) in owner.host.split_whitespace().enumerate() {
        if i > 0 {
            out.push(b'-');
        }
        out.extend_from_slice(word.as_bytes());
    }
    out.push(b' ');
    push_decimal(out, owner.since_ms);
    out.push(b' ');
    if owner.command.chars().any(char::is_control) {
        let mut utf8 = [0u8; 4];
        for c in owner.command.chars() {
            let c = if c.is_control() { ' ' } else { c };
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    } else {
        out.extend_from_slice(owner.command.as_bytes());
    }
    out.push(b'\n');
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(hasp_text::decimal(n, &mut [0; 20]).as_bytes());
}

/// A failed OS-lock call on `path`.
fn failure(path: &str, action: &str, err: LockError) -> Error {
    let reason = match err {
        LockError::WouldBlock => "held by another process".to_string(),
        LockError::NoSuchDirectory => "no such preopened directory".to_string(),
        LockError::NoSuchFile => "no such file".to_string(),
        LockError::NotAFile => "not a regular file inside the directory".to_string(),
        LockError::Io(reason) => reason,
    };
    errors::io_failure(action, path, &reason)
}

/// Parses `pid host since-ms command...`; `None` for anything else.
fn parse_owner(text: &str) -> Option<Owner> {
    let line = text.lines().next()?;
    let mut parts = line.splitn(4, ' ');
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?.to_string();
    let since_ms = parts.next()?.parse().ok()?;
    let command = parts.next().unwrap_or("").to_string();
    Some(Owner {
        pid,
        host,
        since_ms,
        command,
    })
}

/// A lock file path: relative, inside the directory, no `.`/`..` segments,
/// no control characters, not one of the registry's own entries.
fn check_path(path: &str) -> Result<(), Error> {
    let bad = |why: &str| errors::invalid("lock file path", path, why);
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.starts_with('/') {
        return Err(bad("it is absolute and outside the lock directory"));
    }
    if path.len() > MAX_PATH {
        return Err(bad(&format!("it is longer than {MAX_PATH} bytes")));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(bad(&format!("it contains the control character {c:?}")));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(bad("it has an empty segment (`//` or a trailing `/`)")),
            "." | ".." => return Err(bad("`.` and `..` would leave or blur the lock directory")),
            _ => {}
        }
    }
    let first = path.split('/').next().unwrap_or("");
    if RESERVED.contains(&first) {
        return Err(bad("it names the lock registry's own files"));
    }
    Ok(())
}

crate::export!(Component with_types_in crate);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The record as first written (`format!`), the reference for the
    /// one made without allocations.
    fn reference(owner: &Owner) -> String {
        let command: String = owner
            .command
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let host: String = owner.host.split_whitespace().collect::<Vec<_>>().join("-");
        format!("{} {} {} {}\n", owner.pid, host, owner.since_ms, command)
    }

    fn owner(pid: u32, host: &str, since_ms: u64, command: &str) -> Owner {
        Owner {
            pid,
            host: host.to_string(),
            since_ms,
            command: command.to_string(),
        }
    }

    #[test]
    fn the_record_is_one_line_of_four_fields() {
        let mut line = Vec::new();
        write_owner_line(
            &owner(4242, " build host ", 1795450452162, "./deploy.sh\n--prod"),
            &mut line,
        );
        assert_eq!(line, b"4242 build-host 1795450452162 ./deploy.sh --prod\n");
        write_owner_line(&owner(0, "", 0, ""), &mut line);
        assert_eq!(line, b"0  0 \n");
    }

    #[test]
    fn a_record_is_remade_only_for_another_owner() {
        let mut record = Record::default();
        let first = record.of(owner(1, "h", 5, "c")).to_vec();
        assert_eq!(record.of(owner(1, "h", 5, "c")), first.as_slice());
        assert_eq!(record.of(owner(1, "h", 6, "c")), b"1 h 6 c\n");
        assert_eq!(record.of(owner(1, "h", 6, "d")), b"1 h 6 d\n");
    }

    proptest! {
        #[test]
        fn the_record_is_what_format_made_and_reads_back(
            pid in any::<u32>(),
            host in "\\PC{0,12}|[a-z \t]{0,12}",
            since_ms in any::<u64>(),
            command in any::<String>(),
        ) {
            let owner = owner(pid, &host, since_ms, &command);
            let mut line = Vec::new();
            write_owner_line(&owner, &mut line);
            let text = String::from_utf8(line).expect("UTF-8");
            prop_assert_eq!(&text, &reference(&owner));
            let back = parse_owner(&text).expect("a record reads back");
            prop_assert_eq!(back.pid, pid);
            prop_assert_eq!(back.since_ms, since_ms);
        }
    }
}
