//! The agent's use of glibc's allocator: how many malloc arenas it may make, and how
//! many it has (for tests and diagnostics).
//!
//! glibc gives threads that allocate at the same time arenas of their own, up to
//! eight per core. A deploy makes a hundred short-lived threads at once (namespace
//! work, libnftables loads, the blocking pool), so the agent ended up with many arenas,
//! each keeping freed memory it could not give back because of a few live chunks: with
//! 100 tasks the agent held 30–50 MiB from run to run (above the 40 MiB goal in 4 runs
//! of 18). Capped at two arenas it held 26.6–28.9 MiB in six runs, with deploys no
//! slower (0.73–0.89 s against 0.75–0.85; measured 2026-12-07). The agent allocates
//! little per task, so contention on two arenas costs nothing measurable.

#![allow(unsafe_code)]

/// Arenas the agent allows itself.
pub const AGENT_ARENAS: i32 = 2;

/// Caps the number of malloc arenas (glibc's `M_ARENA_MAX`). Call before the process
/// starts threads: arenas made before stay. False if the allocator refused, or is not
/// glibc's (then there is nothing to cap).
pub fn limit_arenas(max: i32) -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets an allocator parameter; any value is accepted or
        // refused with 0, and it has no memory-safety preconditions.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, max) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = max;
        false
    }
}

/// How many arenas the allocator has made so far (the `<heap>` entries of
/// `malloc_info`), or None where that cannot be read (not glibc, or the report failed).
pub fn arenas() -> Option<usize> {
    #[cfg(target_env = "gnu")]
    {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: open_memstream gets valid pointers to a buffer pointer and a length it
        // updates on fflush/fclose; the stream is closed below before either is read.
        let stream = unsafe { libc::open_memstream(&mut buf, &mut len) };
        if stream.is_null() {
            return None;
        }
        // SAFETY: `stream` is an open FILE*; malloc_info only writes XML into it.
        let ok = unsafe { libc::malloc_info(0, stream) } == 0;
        // SAFETY: `stream` is open and not used after this.
        unsafe { libc::fclose(stream) };
        if buf.is_null() {
            return None;
        }
        // SAFETY: after fclose, `buf` holds `len` bytes written by the stream (plus a
        // NUL), allocated with malloc; it is copied, then freed exactly once.
        let text = unsafe {
            let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), len);
            let text = String::from_utf8_lossy(bytes).into_owned();
            libc::free(buf.cast());
            text
        };
        ok.then(|| text.matches("<heap nr=").count())
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}
