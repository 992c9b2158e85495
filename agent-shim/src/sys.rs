//! The only module with `unsafe`: thin, safe wrappers over the few Unix
//! system calls the shim needs that std and tokio do not offer
//! (`waitpid` on any child, `kill`, `prctl(PR_SET_CHILD_SUBREAPER)`,
//! `prctl(PR_SET_PDEATHSIG)` in the agent before it runs, `poll`,
//! `ioctl(FIONREAD)`, `gethostname`, `prctl(PR_SET_DUMPABLE)`).
//!
//! Each wrapper only translates arguments and errors. Policy (which child to
//! wait for, which signal to send) lives in `child.rs`, never here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

/// Which children [`waitpid_nohang`] may reap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// Only this process id.
    Pid(i32),
    /// Any child, including orphans re-parented to us (PID 1 or subreaper).
    AnyChild,
}

/// `waitpid(pid, WNOHANG)`: reaps one child that has exited, if any.
///
/// Returns `Ok(None)` when the children exist but none has exited yet, and
/// `Err` with `ECHILD` when there is no such child at all.
pub fn waitpid_nohang(which: WaitFor) -> io::Result<Option<(i32, ExitStatus)>> {
    let pid = match which {
        WaitFor::Pid(pid) => pid,
        WaitFor::AnyChild => -1,
    };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int for the duration of the
        // call; waitpid has no other memory effects.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match ret {
            0 => return Ok(None),
            -1 => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            reaped => return Ok(Some((reaped, ExitStatus::from_raw(status)))),
        }
    }
}

/// `kill(pid, signal)`.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    let ret = unsafe { libc::kill(pid, signal) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes this process the reaper of its orphaned descendants
/// (`prctl(PR_SET_CHILD_SUBREAPER, 1)`, Linux only).
#[cfg(target_os = "linux")]
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument; the unused
    // variadic arguments are passed as zero as the man page asks.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Subreapers are a Linux feature; elsewhere this reports "unsupported".
#[cfg(not(target_os = "linux"))]
pub fn set_child_subreaper() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "child subreapers need Linux (prctl PR_SET_CHILD_SUBREAPER)",
    ))
}

/// Makes the process `command` starts receive SIGKILL when the thread that
/// starts it ends (`prctl(PR_SET_PDEATHSIG)`, Linux only; elsewhere nothing
/// is set). Start it from a thread that lives as long as the process.
///
/// If this process is gone before the signal is set, the new one sees
/// another parent and exits instead of running.
#[cfg(target_os = "linux")]
pub fn kill_when_parent_dies(command: &mut Command) {
    let parent = std::process::id();
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe system calls on
        // plain integers; nothing is allocated or locked after the fork.
        let (ret, ppid) = unsafe {
            let ret = libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            );
            (ret, libc::getppid())
        };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        if u32::try_from(ppid).ok() != Some(parent) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook only makes the async-signal-safe calls above.
    unsafe {
        command.pre_exec(hook);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn kill_when_parent_dies(_command: &mut Command) {}

/// Which of `fds` are ready to read (data, end of file or an error), waiting
/// as long as it takes (`poll`).
pub fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> io::Result<[bool; N]> {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: the pointer and count describe `polled`, which outlives
        // the call; the descriptors are borrowed, so open.
        let ret = unsafe { libc::poll(polled.as_mut_ptr(), N as libc::nfds_t, -1) };
        if ret >= 0 {
            return Ok(polled.map(|p| p.revents != 0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Bytes waiting to be read in a pipe (`ioctl(FIONREAD)`).
pub fn bytes_readable(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which is valid for
    // the call; the descriptor is borrowed, so open.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut count) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(count).unwrap_or(0))
}

/// The host name (`gethostname`), lossily decoded as UTF-8.
pub fn hostname() -> io::Result<String> {
    // HOST_NAME_MAX is 64 on Linux and 255 elsewhere; 256 fits both plus NUL.
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let ret = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// `prctl(PR_SET_DUMPABLE, 0)`: other processes of the same user (the
/// agent) can no longer read this process's memory or
/// `/proc/<pid>/environ`. `execve` resets it, so the agent is unaffected.
#[cfg(target_os = "linux")]
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_not_dumpable() -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waitpid_reports_no_child_as_echild() {
        // i32::MAX is above the kernel's pid_max, so it is never our child.
        let err = waitpid_nohang(WaitFor::Pid(i32::MAX)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECHILD));
    }

    #[test]
    // The child is reaped by the waitpid under test, not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn waitpid_returns_exit_status_of_a_child() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let status = loop {
            if let Some((reaped, status)) = waitpid_nohang(WaitFor::Pid(pid)).unwrap() {
                assert_eq!(reaped, pid);
                break status;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(status.code(), Some(7));
    }

    #[test]
    fn a_pipe_is_readable_once_written_or_closed_and_counts_its_bytes() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (reader, mut writer) = std::io::pipe().unwrap();
        let (other, other_writer) = std::io::pipe().unwrap();
        writer.write_all(b"abc").unwrap();
        let ready = poll_readable([reader.as_fd(), other.as_fd()]).unwrap();
        assert_eq!(ready, [true, false]);
        assert_eq!(bytes_readable(reader.as_fd()).unwrap(), 3);
        drop(other_writer);
        assert_eq!(poll_readable([other.as_fd()]).unwrap(), [true]);
        assert_eq!(bytes_readable(other.as_fd()).unwrap(), 0);
    }

    #[test]
    fn hostname_is_not_empty() {
        assert!(!hostname().unwrap().is_empty());
    }
}
