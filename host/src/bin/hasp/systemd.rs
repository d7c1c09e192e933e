//! systemd's two protocols for a daemon, without libsystemd: socket
//! activation (a listening socket passed as fd 3, `LISTEN_PID` and
//! `LISTEN_FDS` saying it is ours) and readiness notification (`READY=1`,
//! `STOPPING=1` sent as datagrams to `NOTIFY_SOCKET`).

use std::os::fd::{FromRawFd, RawFd};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_PASSED: RawFd = 3;

/// The listening TCP socket systemd passed this process, if it passed one:
/// `LISTEN_PID` is our pid and `LISTEN_FDS` at least 1 (only the first is
/// used). The variables are removed, so that a child does not take the
/// socket for its own.
pub fn passed_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let ours =
        pid.as_deref().and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    // SAFETY: removing variables before any other thread of this process
    // reads the environment (the network runtime starts later).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let count = match (ours, fds) {
        (true, Some(n)) => n
            .trim()
            .parse::<u32>()
            .map_err(|_| anyhow::anyhow!("LISTEN_FDS={n:?} is not a number of descriptors"))?,
        _ => return Ok(None),
    };
    if count == 0 {
        return Ok(None);
    }
    if !is_listening_tcp(FIRST_PASSED) {
        anyhow::bail!(
            "the socket systemd passed (fd {FIRST_PASSED}) is not a listening TCP socket: \
             give the socket unit ListenStream=HOST:PORT"
        );
    }
    // SAFETY: fd 3 is a listening socket systemd handed to this process
    // (checked above); nothing else in the process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(FIRST_PASSED) };
    set_cloexec(FIRST_PASSED);
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Whether `fd` is a socket of the IPv4 or IPv6 family, of stream type,
/// that listens.
fn is_listening_tcp(fd: RawFd) -> bool {
    let option = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `value`.
        let ok =
            unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) } == 0;
        ok.then_some(value)
    };
    let family = option(libc::SOL_SOCKET, libc::SO_DOMAIN);
    matches!(family, Some(libc::AF_INET | libc::AF_INET6))
        && option(libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && option(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
}

/// Keeps `fd` from being inherited by the commands hasp runs.
fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl(2) on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`) when it
/// asked to be told (`NOTIFY_SOCKET`: a path, or `@name` for an abstract
/// socket). A failure to tell is logged, never fatal.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(err) = send(&target, state) {
        tracing::warn!(
            target: "hasp::serve",
            "could not tell the service manager {state} at NOTIFY_SOCKET={}: {err}",
            target.to_string_lossy()
        );
    }
}

fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(target))?,
    };
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
