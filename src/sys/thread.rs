//! Thread attributes (`pthread_getattr_np(3)`), for tests.

use std::io;

/// The stack size of the calling thread, as the thread itself sees it.
pub(crate) fn current_stack_size() -> io::Result<usize> {
    // SAFETY: attributes of the calling thread, initialised by
    // pthread_getattr_np and destroyed after use.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let e = libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
        if e != 0 {
            return Err(io::Error::from_raw_os_error(e));
        }
        let mut size = 0;
        let e = libc::pthread_attr_getstacksize(&attr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        match e {
            0 => Ok(size),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}
