//! `hasp:lock/file-lock`: advisory OS locks (flock(2)) for the guest, on
//! files the host opens with cap-std beneath the directories it preopened
//! for that very instance. A path can never leave its directory: cap-std
//! resolves every component beneath the directory handle. A symlink or any
//! other non-regular file at the end is refused when looked at before the
//! open, and the opened file is checked again.

use crate::bindings::process::file_lock::{Host, HostFile, LockError, LockMode};
use crate::bindings::LockHandle;
use crate::runtime::State;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;
use wasmtime::component::Resource;

impl Host for State {}

impl HostFile for State {
    fn open(
        &mut self,
        dir: String,
        path: String,
        create: bool,
    ) -> wasmtime::Result<Result<Resource<LockHandle>, LockError>> {
        let Some(dir) = self.lock_dirs.get(&dir) else {
            return Ok(Err(LockError::NoSuchDirectory));
        };
        let file = match open_beneath(dir, &path, create) {
            Ok(file) => file,
            Err(err) => return Ok(Err(err)),
        };
        let handle = LockHandle {
            file: Arc::new(file),
        };
        Ok(Ok(self.table.push(handle)?))
    }

    fn lock(
        &mut self,
        handle: Resource<LockHandle>,
        mode: LockMode,
        timeout_ms: Option<u64>,
        content: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<(), LockError>> {
        let file = self.table.get(&handle)?.file.clone();
        let timeout = timeout_ms.map(Duration::from_millis);
        if timeout != Some(Duration::ZERO) {
            // The guest's own time limit should not count this wait.
            self.waited = true;
        }
        if let Err(err) = acquire(&file, mode, timeout) {
            return Ok(Err(err));
        }
        if let Some(content) = content {
            if let Err(err) = replace_content(&file, &content) {
                let _ = file.unlock();
                return Ok(Err(io_error(err)));
            }
        }
        Ok(Ok(()))
    }

    fn unlock(&mut self, handle: Resource<LockHandle>) -> wasmtime::Result<Result<(), LockError>> {
        let file = &self.table.get(&handle)?.file;
        Ok(file.unlock().map_err(io_error))
    }

    fn held(
        &mut self,
        handle: Resource<LockHandle>,
    ) -> wasmtime::Result<Result<Option<LockMode>, LockError>> {
        let file = &self.table.get(&handle)?.file;
        Ok(held_mode(file).map_err(io_error))
    }

    fn drop(&mut self, handle: Resource<LockHandle>) -> wasmtime::Result<()> {
        // Closing the file releases its lock.
        self.table.delete(handle)?;
        Ok(())
    }
}

/// Opens `path` beneath `dir` for locking: a regular file, created if
/// missing and `create` is set, never truncated. Each directory on the way
/// is opened on its own, one name at a time, and so is the file: a symlink
/// anywhere along the path is refused (the guest refuses it first, by name;
/// this is the host's own guard), as is anything but a directory on the way
/// and anything but a regular file at the end.
fn open_beneath(dir: &cap_std::fs::Dir, path: &str, create: bool) -> Result<File, LockError> {
    let (parents, name) = match path.rsplit_once('/') {
        Some((parents, name)) => (Some(parents), name),
        None => (None, path),
    };
    let mut below: Option<cap_std::fs::Dir> = None;
    for segment in parents.into_iter().flat_map(|p| p.split('/')) {
        let here = below.as_ref().unwrap_or(dir);
        below = Some(open_level(here, segment, create)?);
    }
    let dir = below.as_ref().unwrap_or(dir);
    one_name(name)?;
    // Look first: opening a FIFO or a device may block or act on it.
    match dir.symlink_metadata(name) {
        Ok(meta) if !meta.is_file() => return Err(LockError::NotAFile),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !create => {
            return Err(LockError::NoSuchFile)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(err)),
    }
    let mut options = cap_std::fs::OpenOptions::new();
    options.read(true).write(true).create(create);
    // Replaced by a FIFO after the look: the open still does not block.
    cap_std::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = dir.open_with(name, &options).map_err(io_error)?.into_std();
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        return Err(LockError::NotAFile);
    }
    use std::os::unix::fs::MetadataExt;
    still_named(dir, name, meta.dev(), meta.ino())?;
    Ok(file)
}

/// Opens directory `name`, one path component, in `dir`: never through a
/// symlink, never anything but a directory (opened with `O_DIRECTORY`, so a
/// FIFO is not waited on).
fn open_level(
    dir: &cap_std::fs::Dir,
    name: &str,
    create: bool,
) -> Result<cap_std::fs::Dir, LockError> {
    one_name(name)?;
    let opened = match dir.open_dir(name) {
        Ok(opened) => opened,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !create => {
            return Err(LockError::NoSuchFile)
        }
        Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => return Err(LockError::NotAFile),
        Err(err) => return Err(io_error(err)),
    };
    let meta = opened.dir_metadata().map_err(io_error)?;
    use cap_std::fs::MetadataExt;
    still_named(dir, name, meta.dev(), meta.ino())?;
    Ok(opened)
}

/// Checks that `name` in `dir` is itself (not a symlink to) the file with
/// device `dev` and inode `ino`, the one just opened by that name.
fn still_named(dir: &cap_std::fs::Dir, name: &str, dev: u64, ino: u64) -> Result<(), LockError> {
    use cap_std::fs::MetadataExt;
    let named = dir.symlink_metadata(name).map_err(io_error)?;
    if named.file_type().is_symlink() || (named.dev(), named.ino()) != (dev, ino) {
        return Err(LockError::NotAFile);
    }
    Ok(())
}

/// Refuses what is not one plain name (the guest has checked the path; the
/// host does not rely on that).
fn one_name(name: &str) -> Result<(), LockError> {
    match name {
        "" | "." | ".." => Err(LockError::NotAFile),
        _ => Ok(()),
    }
}

/// Makes `content` the whole of the file. The current content is read
/// first: a file that already says exactly this is left alone, and one that
/// does not is written over from the start and then cut to length if it was
/// longer. The file never passes through empty, and reading rather than
/// stat-ing keeps the write cheap (a stat makes the next write stamp a
/// fine-grained change time).
fn replace_content(file: &File, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut current = [0u8; 512];
    let mut seen = 0;
    // Read one byte more than `content` holds, to tell "longer" from "equal".
    let want = (content.len() + 1).min(current.len());
    while seen < want {
        match file.read_at(&mut current[seen..want], seen as u64) {
            Ok(0) => break,
            Ok(n) => seen += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    if &current[..seen] == content {
        return Ok(());
    }
    file.write_all_at(content, 0)?;
    if seen > content.len() || content.len() >= current.len() {
        file.set_len(content.len() as u64)?;
    }
    Ok(())
}

/// The strongest flock held on `file` by anyone. Read from `/proc/locks`
/// (Linux) so that asking a held file takes no lock; a file that looks free
/// there, or a system without it, is confirmed with a non-blocking try.
fn held_mode(file: &File) -> std::io::Result<Option<LockMode>> {
    let Ok(table) = std::fs::read_to_string("/proc/locks") else {
        return held_by_trying(file);
    };
    match held_in_table(file, &table)? {
        Some(mode) => Ok(Some(mode)),
        // /proc/locks can be blind to a holder (another PID namespace, a
        // btrfs subvolume's device number): make sure before saying free.
        None => held_by_trying(file),
    }
}

/// The strongest flock on `file` listed in a /proc/locks `table`.
fn held_in_table(file: &File, table: &str) -> std::io::Result<Option<LockMode>> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let wanted = (
        u64::from(libc::major(meta.dev())),
        u64::from(libc::minor(meta.dev())),
        meta.ino(),
    );
    let mut strongest = None;
    for line in table.lines() {
        // "1: FLOCK  ADVISORY  WRITE 4242 08:01:123456 0 EOF"; waiters
        // ("1: -> FLOCK ...") hold nothing.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] != "FLOCK" {
            continue;
        }
        let mut id = fields[5].split(':');
        let mut hex = || id.next().and_then(|x| u64::from_str_radix(x, 16).ok());
        let (major, minor) = (hex(), hex());
        let inode = id.next().and_then(|x| x.parse().ok());
        if (major, minor, inode) != (Some(wanted.0), Some(wanted.1), Some(wanted.2)) {
            continue;
        }
        match fields[3] {
            "WRITE" => return Ok(Some(LockMode::Exclusive)),
            _ => strongest = Some(LockMode::Shared),
        }
    }
    Ok(strongest)
}

/// Whether `file` is held, found by trying to lock it without waiting.
fn held_by_trying(file: &File) -> std::io::Result<Option<LockMode>> {
    use std::fs::TryLockError;
    match file.try_lock() {
        Ok(()) => file.unlock().map(|()| None),
        Err(TryLockError::Error(err)) => Err(err),
        Err(TryLockError::WouldBlock) => match file.try_lock_shared() {
            Ok(()) => file.unlock().map(|()| Some(LockMode::Shared)),
            Err(TryLockError::WouldBlock) => Ok(Some(LockMode::Exclusive)),
            Err(TryLockError::Error(err)) => Err(err),
        },
    }
}

/// Takes the lock, waiting at most `timeout` (`None`: for ever).
fn acquire(file: &Arc<File>, mode: LockMode, timeout: Option<Duration>) -> Result<(), LockError> {
    let attempt = match mode {
        LockMode::Shared => file.try_lock_shared(),
        LockMode::Exclusive => file.try_lock(),
    };
    match attempt {
        Ok(()) => return Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(err)) => return Err(io_error(err)),
    }
    match timeout {
        Some(Duration::ZERO) => Err(LockError::WouldBlock),
        None => loop {
            let waited = match mode {
                LockMode::Shared => file.lock_shared(),
                LockMode::Exclusive => file.lock(),
            };
            match waited {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map_err(io_error),
            }
        },
        Some(limit) => acquire_within(file, mode, limit),
    }
}

/// The signal that interrupts a helper thread's wait. Its default action is
/// to ignore it; the handler installed for it passes on what is not ours.
const WAKE: libc::c_int = libc::SIGURG;

/// Waits for the lock on a helper thread blocked in flock(2), so that the
/// release wakes it; at the deadline the thread is interrupted with [`WAKE`]
/// and joined, so no wait outlives the call.
fn acquire_within(file: &Arc<File>, mode: LockMode, limit: Duration) -> Result<(), LockError> {
    install_wake_handler();
    let operation = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    let (done, outcome) = mpsc::channel();
    let waiter = {
        let (file, cancelled) = (file.clone(), cancelled.clone());
        std::thread::Builder::new()
            .name("hasp-flock".into())
            .spawn(move || {
                unblock_wake();
                WAITING.with(|waiting| waiting.set(true));
                loop {
                    // SAFETY: flock on a descriptor this thread keeps open (`file`).
                    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                        let _ = done.send(Ok(()));
                        return;
                    }
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        let _ = done.send(Err(io_error(err)));
                        return;
                    }
                    if cancelled.load(Ordering::SeqCst) {
                        let _ = done.send(Err(LockError::WouldBlock));
                        return;
                    }
                }
            })
            .map_err(io_error)?
    };
    let result = match outcome.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => {
            cancelled.store(true, Ordering::SeqCst);
            loop {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: the thread is alive until it has sent its outcome,
                // and it is joined below, so its pthread_t is valid here.
                unsafe { libc::pthread_kill(waiter.as_pthread_t(), WAKE) };
                match outcome.recv_timeout(Duration::from_millis(5)) {
                    // Granted just as the time ran out: keep it.
                    Ok(result) => break result,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break Err(LockError::WouldBlock),
                }
            }
        }
    };
    let _ = waiter.join();
    result
}

/// Lets [`WAKE`] reach this thread even if the thread that spawned it (an
/// embedding application's) blocks it.
fn unblock_wake() {
    // SAFETY: plain signal-mask manipulation of the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, WAKE);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The handler that was installed for [`WAKE`] before ours, if any.
static BEFORE: OnceLock<libc::sigaction> = OnceLock::new();

thread_local! {
    /// Set on a helper thread while its flock(2) waits: a [`WAKE`] there is
    /// ours.
    static WAITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs the process-wide handler for [`WAKE`], once. The handler does
/// nothing on a helper thread that waits for a lock (the signal only cuts
/// the wait short: no `SA_RESTART`, so flock(2) returns `EINTR`), and
/// passes any other `WAKE` on to the handler that was installed before,
/// so an application's own use of the signal keeps working.
fn install_wake_handler() {
    BEFORE.get_or_init(|| {
        // SAFETY: sigaction(2) with a zeroed (then filled) struct; the old
        // action is written into `before`.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = wake as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            let mut before: libc::sigaction = std::mem::zeroed();
            libc::sigaction(WAKE, &action, &mut before);
            before
        }
    });
}

/// The handler for [`WAKE`] (see [`install_wake_handler`]).
extern "C" fn wake(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // `try_with`: a thread being torn down has no flag, and is not ours.
    if WAITING.try_with(|waiting| waiting.get()).unwrap_or(false) {
        return;
    }
    let Some(before) = BEFORE.get() else { return };
    let handler = before.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SIGURG's default action is to ignore it.
        return;
    }
    // SAFETY: `handler` is the function the application installed for this
    // signal, called the way its flags say it expects.
    unsafe {
        if before.sa_flags & libc::SA_SIGINFO != 0 {
            let chained: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            chained(signal, info, context);
        } else {
            let chained: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            chained(signal);
        }
    }
}

fn io_error(err: std::io::Error) -> LockError {
    LockError::Io(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// How many `SIGURG`s reached the application's own handler.
    static THEIRS: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn theirs(_: libc::c_int) {
        THEIRS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_timed_wait_passes_other_sigurgs_on_to_the_handler_installed_before() {
        // SAFETY: installs a handler that only counts, as an application
        // that uses SIGURG would, before hasp's first timed wait.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = theirs as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(WAKE, &action, std::ptr::null_mut());
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("held.lock");
        let holder = File::create(&path).expect("create");
        holder.lock().expect("lock");
        let file = File::options().read(true).write(true).open(&path);
        let file = Arc::new(file.expect("open"));
        let waited = acquire_within(&file, LockMode::Exclusive, Duration::from_millis(50));
        assert!(matches!(waited, Err(LockError::WouldBlock)), "{waited:?}");
        assert_eq!(THEIRS.load(Ordering::SeqCst), 0, "the wake-up was hasp's");
        // SAFETY: raise(3) runs the handler on this thread before returning.
        unsafe { libc::raise(WAKE) };
        assert_eq!(THEIRS.load(Ordering::SeqCst), 1, "passed on");
    }
}
