//! Unix stream sockets: binding a path without ever stealing a live socket,
//! with the permissions asked for, and removing the file again on shutdown.

use socket2::{Domain, SockAddr, Socket, Type};
use std::fs::{self, File, TryLockError};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Binds a listening Unix socket at `path`, and returns it with the file it
/// created. If something is already there:
/// a socket a server answers on is left alone (`AddrInUse`), a stale socket
/// file (nobody answers) is replaced, anything else is refused.
///
/// Check, probe, unlink and bind are four steps: two servers starting at
/// the same moment could each find the other's fresh socket not yet
/// listening, take it for stale and unlink it. So the steps run under an
/// exclusive lock on `PATH.lock`, held for as long as the server serves
/// the socket (a server that holds it is starting or live).
///
/// `mode` (such as `0o660`) is set before `listen`, so no client can
/// connect while the socket still has the umask's permissions.
pub(crate) fn bind_unix(
    path: &Path,
    backlog: i32,
    mode: Option<u32>,
) -> io::Result<(Socket, SocketFile)> {
    let lock = PathLock::take(path)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if is_live(path)? {
                return Err(io::Error::new(
                    ErrorKind::AddrInUse,
                    "another server is listening on this socket",
                ));
            }
            log::info!("replacing stale socket file {}", path.display());
            fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                ErrorKind::AlreadyExists,
                "the path exists and is not a socket; not replacing it",
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let file = SocketFile::new(path, lock)?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    socket.listen(backlog)?;
    Ok((socket, file))
}

/// An exclusive lock on `PATH.lock` beside a socket path. The lock file is
/// removed (while still locked) when the server lets the path go.
#[derive(Debug)]
struct PathLock {
    path: PathBuf,
    /// Holds the lock until dropped.
    _file: File,
}

impl PathLock {
    /// Times the lock file may be found replaced under us before giving
    /// up: each needs another server to finish in between, so a few are
    /// plenty, and a bound means a start-up can never spin.
    const ATTEMPTS: usize = 8;

    fn take(socket: &Path) -> io::Result<PathLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut name = socket.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        for _ in 0..Self::ATTEMPTS {
            // Never through a symbolic link: whoever can write to the
            // directory could otherwise make this process create (as its
            // user, perhaps root) any file the link names.
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| {
                    let why = if e.raw_os_error() == Some(libc::ELOOP) {
                        "it is a symbolic link, which is never followed".to_owned()
                    } else {
                        e.to_string()
                    };
                    io::Error::new(
                        e.kind(),
                        format!("cannot open the lock file {}: {why}", path.display()),
                    )
                })?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(io::Error::new(
                        ErrorKind::AddrInUse,
                        format!(
                            "another server holds {} (it is starting or serving this socket)",
                            path.display()
                        ),
                    ))
                }
                Err(TryLockError::Error(e)) => return Err(e),
            }
            // The holder before us may have removed the file between our
            // open and our lock: a lock on a removed file guards nothing,
            // so lock the file that is there now.
            let same = fs::symlink_metadata(&path).is_ok_and(|now| {
                file.metadata()
                    .is_ok_and(|ours| (ours.dev(), ours.ino()) == (now.dev(), now.ino()))
            });
            if same {
                return Ok(PathLock { path, _file: file });
            }
        }
        Err(io::Error::new(
            ErrorKind::AddrInUse,
            format!(
                "{} keeps being replaced (servers starting and stopping on this socket)",
                path.display()
            ),
        ))
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Removed while locked, so whoever opened it meanwhile finds it
        // gone once they hold the lock, and starts again.
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether a server answers at `path`. A connection attempt that is refused
/// means a stale file; one that is accepted, or would wait (a full backlog:
/// the server is busy, not gone), means a live server. A Unix-domain
/// `connect` never waits to be answered, so a non-blocking one settles it
/// at once.
fn is_live(path: &Path) -> io::Result<bool> {
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(false),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}

/// The socket file this server created, and the lock that makes it ours.
/// Dropping it removes the file, but only if it is still the same file
/// (something may have replaced it), then the lock.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Dropped after the socket file is removed (fields drop after `drop`).
    _lock: PathLock,
}

impl SocketFile {
    fn new(path: &Path, lock: PathLock) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            _lock: lock,
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}
