//! Unix stream sockets: binding a path without ever stealing a live socket,
//! and removing the file again on shutdown.

use socket2::{Domain, SockAddr, Socket, Type};
use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Binds a listening Unix socket at `path`, and returns it with the file it
/// created. If something is already there:
/// a socket a server answers on is left alone (`AddrInUse`), a stale socket
/// file (nobody answers) is replaced, anything else is refused.
pub(crate) fn bind_unix(path: &Path, backlog: i32) -> io::Result<(Socket, SocketFile)> {
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
    let file = SocketFile::new(path)?;
    socket.listen(backlog)?;
    Ok((socket, file))
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

/// The socket file this server created. Dropping it removes the file, but
/// only if it is still the same file: another server may have replaced it.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
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
