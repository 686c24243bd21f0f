//! Loading `nft -f` scripts into one network namespace: through libnftables in this
//! process where the library is installed (it comes with the `nft` binary, Debian's
//! `libnftables1`), else through the `nft` binary.
//!
//! A task's table is loaded when the task starts and again whenever a service it can
//! reach changes its backends, so a hundred tasks starting at once mean a few hundred
//! loads. Through the binary each costs a process start and ~4 ms of CPU; through
//! libnftables ~0.8 ms (measured on this project's 2-core VM). Each load runs on a
//! thread inside the namespace with a context of its own, freed at the end: a context
//! kept per task would save a little more (~0.25 ms a load) but costs ~0.7 MiB of the
//! agent's memory per task once it has loaded anything (its cache and parser state;
//! measured: 100 kept contexts took the agent from 32 to 149 MiB), and its socket would
//! keep the namespace alive. Freeing a context closes its netlink socket, which waits
//! for an RCU grace period if the transaction destroyed anything (a reload's flush):
//! 10–30 ms on the loading thread, none on a task's first load.
//!
//! Measured in a lab of one agent, 100 replicas deployed (image present), two rounds of
//! two deploys each way: through the library 653–764 ms and 0.96–1.25 s of CPU (all
//! processes) per deploy; through the binary 751–1353 ms and 1.16–1.77 s.
//!
//! libnftables is loaded with `dlopen` rather than linked, so a host without it (or
//! with an incompatible one) still works through the binary, and building skiff needs
//! no `-dev` package. Docker made the same move (moby#51033: ~20 ms → under 1 ms per
//! update).
//!
//! Threads: every libnftables context keeps its parser, cache and socket to itself, so
//! loads through different contexts run side by side. `nft_ctx_new` is serialised (it
//! sets up library globals on first use without a lock). The one global a load touches
//! is the interface-name cache (`iface_cache_release` after every command), which only
//! scripts naming interfaces fill: task tables name none, so they are the only scripts
//! loaded through the library (the node table, which does, goes through the binary). A
//! single lock around every load was tried and dropped: during a 100-replica deploy,
//! with every core busy, a thread holding it was descheduled often enough that a
//! starting task's first load waited 130–380 ms behind it.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::firewall::{self, FirewallError};
use crate::netns;

/// What a load through the library is called in errors.
const LIB_CMD: &str = "nft -f - (libnftables)";

type CtxNew = unsafe extern "C" fn(flags: u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(ctx: *mut c_void);
type CtxBuffer = unsafe extern "C" fn(ctx: *mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(ctx: *mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(ctx: *mut c_void, buf: *const c_char) -> c_int;

/// libnftables' entry points, resolved once per process.
struct Library {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxBuffer,
    buffer_error: CtxBuffer,
    get_output: CtxGetBuffer,
    get_error: CtxGetBuffer,
    run: RunCmd,
    /// Keeps the symbols above valid; never unloaded.
    _lib: libloading::Library,
}

static LIBRARY: OnceLock<Option<Library>> = OnceLock::new();

/// Serialises `nft_ctx_new` (see the module doc).
static NEW: Mutex<()> = Mutex::new(());

/// libnftables, or None (with the reason logged once) where it can't be loaded.
fn library() -> Option<&'static Library> {
    LIBRARY
        .get_or_init(|| match Library::load() {
            Ok(lib) => Some(lib),
            Err(err) => {
                tracing::info!(%err, "libnftables not usable; loading rules with the nft binary");
                None
            }
        })
        .as_ref()
}

impl Library {
    fn load() -> Result<Self, libloading::Error> {
        // SAFETY: libnftables.so.1 is a plain C library whose initialisers have no
        // preconditions; each symbol is cast to the signature it has in
        // <nftables/libnftables.h> (stable since libnftables 0.9, soname .1).
        unsafe {
            let lib = libloading::Library::new("libnftables.so.1")?;
            Ok(Library {
                ctx_new: *lib.get::<CtxNew>(b"nft_ctx_new\0")?,
                ctx_free: *lib.get::<CtxFree>(b"nft_ctx_free\0")?,
                buffer_output: *lib.get::<CtxBuffer>(b"nft_ctx_buffer_output\0")?,
                buffer_error: *lib.get::<CtxBuffer>(b"nft_ctx_buffer_error\0")?,
                get_output: *lib.get::<CtxGetBuffer>(b"nft_ctx_get_output_buffer\0")?,
                get_error: *lib.get::<CtxGetBuffer>(b"nft_ctx_get_error_buffer\0")?,
                run: *lib.get::<RunCmd>(b"nft_run_cmd_from_buffer\0")?,
                _lib: lib,
            })
        }
    }
}

/// One libnftables context: its netlink socket belongs to the namespace of the thread
/// that made it.
struct Context {
    lib: &'static Library,
    ctx: NonNull<c_void>,
}

impl Context {
    /// Makes a context in the calling thread's network namespace.
    fn open(lib: &'static Library) -> Result<Self, FirewallError> {
        let _first = NEW
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: nft_ctx_new(0) (NFT_CTX_DEFAULT) has no preconditions; it returns
        // NULL on failure, checked below. The buffer calls take the context just made.
        let ctx = unsafe { (lib.ctx_new)(0) };
        let ctx = NonNull::new(ctx).ok_or_else(|| FirewallError::Failed {
            cmd: LIB_CMD.into(),
            status: "nft_ctx_new failed".into(),
            stderr: String::new(),
        })?;
        let context = Context { lib, ctx };
        // SAFETY: a valid context, see above.
        let buffered = unsafe {
            (lib.buffer_output)(ctx.as_ptr()) == 0 && (lib.buffer_error)(ctx.as_ptr()) == 0
        };
        if !buffered {
            return Err(FirewallError::Failed {
                cmd: LIB_CMD.into(),
                status: "nft_ctx_buffer_output/error failed".into(),
                stderr: String::new(),
            });
        }
        Ok(context)
    }

    /// Runs `script` as one transaction.
    fn run(&mut self, script: &str) -> Result<(), FirewallError> {
        let text = CString::new(script).map_err(|_| FirewallError::Failed {
            cmd: LIB_CMD.into(),
            status: "not run".into(),
            stderr: "the script contains a NUL byte".into(),
        })?;
        let ctx = self.ctx.as_ptr();
        // SAFETY: a valid context owned by this value and a NUL-terminated buffer
        // that outlives the call. The buffer getters return NUL-terminated strings
        // owned by the context, valid until its next call; they are copied at once.
        unsafe {
            let rc = (self.lib.run)(ctx, text.as_ptr());
            let _ = (self.lib.get_output)(ctx);
            let stderr = CStr::from_ptr((self.lib.get_error)(ctx))
                .to_string_lossy()
                .trim()
                .to_owned();
            if rc != 0 {
                return Err(FirewallError::Failed {
                    cmd: LIB_CMD.into(),
                    status: format!("returned {rc}"),
                    stderr,
                });
            }
        }
        Ok(())
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context is valid and used by nothing else; it is not used after.
        unsafe { (self.lib.ctx_free)(self.ctx.as_ptr()) }
    }
}

/// Loads finished so far; a trim is for the load that scheduled it only if no load
/// finished after it.
static LOADS_DONE: AtomicU64 = AtomicU64::new(0);

/// Trims done (for the tests).
static TRIMS: AtomicU64 = AtomicU64::new(0);

/// How long after the last load the heap is trimmed.
const TRIM_QUIET: Duration = Duration::from_millis(50);

/// Trims the heap ([`trim_heap`]) once no load has finished for [`TRIM_QUIET`]: a
/// burst of loads (a hundred tasks starting) is trimmed once, at its end. Until
/// 2026-12-07 (stop 22) every load trimmed, and the next load page-faulted the
/// released memory back: during a 100-replica deploy 16 % of the agent's CPU went to
/// those faults and to the `madvise` calls of the trims.
fn trim_when_quiet() {
    let mine = LOADS_DONE.fetch_add(1, Ordering::Relaxed) + 1;
    // A detached timer: nothing to shut down (a runtime going away drops it, and the
    // memory then goes with the process).
    tokio::spawn(async move {
        tokio::time::sleep(TRIM_QUIET).await;
        if LOADS_DONE.load(Ordering::Relaxed) == mine {
            TRIMS.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        }
    });
}

/// Hands the memory libnftables freed back to the system. Each load runs on a
/// namespace worker (a fresh thread before 2026-12-07), which glibc gives one of its
/// malloc arenas (up to 8 per core by default;
/// `skiff-agent` caps them at two since 2026-12-07, see its `malloc.rs`), and a load
/// leaves ~0.7 MiB of parser and cache state freed in it: without trimming, 100 tasks'
/// loads left the agent at ~59 MiB resident instead of ~32 (before the cap; capping the
/// arenas or the number of loads at once alone did not help then). `malloc_trim` goes
/// over every arena, so any thread may call it.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads scripts into one namespace (`None`: the agent's own). Scripts loaded through
/// the library must name no network interface (see the module doc): skiff loads task
/// tables this way.
#[derive(Debug)]
pub struct Nft {
    ns: Option<PathBuf>,
    /// Whether to use libnftables when it is there.
    library: bool,
}

impl Nft {
    /// Loads into `ns` through libnftables where it is installed.
    pub fn new(ns: Option<&Path>) -> Self {
        Nft {
            ns: ns.map(Path::to_owned),
            library: true,
        }
    }

    /// Loads into `ns` through the `nft` binary only.
    pub fn binary(ns: Option<&Path>) -> Self {
        Nft {
            library: false,
            ..Nft::new(ns)
        }
    }

    /// Whether loads go through libnftables.
    pub fn uses_library(&self) -> bool {
        self.library && library().is_some()
    }

    /// Loads `script` as one transaction. Through the library, on a thread inside the
    /// namespace, with a context made for this load and freed before returning.
    pub async fn load(&self, script: String) -> Result<(), FirewallError> {
        let lib = if self.library { library() } else { None };
        let Some(lib) = lib else {
            return firewall::apply(self.ns.as_deref(), script).await;
        };
        let result = netns::run_in_async(self.ns.as_deref(), move || {
            Context::open(lib).and_then(|mut context| context.run(&script))
        })
        .await;
        trim_when_quiet();
        result?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_loads_is_trimmed_once_after_it() {
        let before = TRIMS.load(Ordering::Relaxed);
        for _ in 0..20 {
            trim_when_quiet();
            tokio::time::sleep(TRIM_QUIET / 10).await;
        }
        assert_eq!(
            TRIMS.load(Ordering::Relaxed),
            before,
            "no trim during the burst"
        );
        tokio::time::sleep(TRIM_QUIET * 3).await;
        assert_eq!(
            TRIMS.load(Ordering::Relaxed),
            before + 1,
            "one trim after it"
        );
    }
}
