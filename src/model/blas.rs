//! A CBLAS library opened at run time (`dlopen`), for [`super::sgemm`]'s f32 GEMMs.
//!
//! Nothing links against a BLAS at build time: a user who wants one names the shared library
//! (`PRIMER_BLAS`, read by the CLI) and [`Blas::open`] resolves `cblas_sgemm` in it, plus the
//! optional vendor calls that set its threading, its reproducibility mode and say its
//! version. Known families: OpenBLAS (`libopenblas.so.0`), Intel MKL's single dynamic
//! library (`libmkl_rt.so.2` / `.so.3`, from the PyPI `mkl` wheel) and BLIS (`libblis.so.4`);
//! any other library that exports the standard `cblas_sgemm` works too, untuned.
//!
//! **Threading.** primer has one thread pool, rayon's; [`super::sgemm`] splits a large GEMM
//! into one block of rows (or columns) per rayon thread and calls the library once per block.
//! So the library must run each call on the calling thread alone: [`Blas::open`] sets its own
//! thread count to 1 (MKL: the sequential threading layer, which also keeps its OpenMP
//! runtime from being loaded). Two pools — rayon's workers spinning for the next element-wise
//! op beside the library's workers spinning for the next GEMM — would fight over the cores.
//!
//! **Reproducibility.** With a fixed thread count the blocks and each library call are the
//! same from run to run. MKL may take a different code path for differently aligned
//! buffers; [`Blas::open`] sets its conditional numerical reproducibility mode to `AUTO`
//! (unless the user's `MKL_CBWR` says otherwise), which makes its results independent of the
//! alignment on a given CPU.
//!
//! A library, once opened, is never closed: its code may run on any thread until the process
//! ends, and closing a BLAS with live worker threads is undefined behaviour.

use libloading::Library;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::PathBuf;

/// `cblas_sgemm(layout, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// CBLAS enumerators (`CBLAS_LAYOUT`, `CBLAS_TRANSPOSE`), as every CBLAS header defines them.
const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

/// MKL's constants (mkl_service.h, mkl_cbwr.h).
const MKL_INTERFACE_LP64: c_int = 0;
const MKL_THREADING_SEQUENTIAL: c_int = 1;
const MKL_CBWR_AUTO: c_int = 2;

/// Why a library could not serve as primer's BLAS.
#[derive(Debug, thiserror::Error)]
pub enum BlasError {
    /// `reason` is the loader's own message (dlerror): which file, and why.
    #[error("cannot load {name}: {reason}")]
    Load { name: String, reason: String },
    #[error("{name} loads but has no cblas_sgemm, so it is not a CBLAS library")]
    NoSgemm { name: String },
}

/// Which library it is, from the vendor calls it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlasFamily {
    OpenBlas,
    Mkl,
    Blis,
    /// Exports `cblas_sgemm` and nothing primer recognises: used as is, with its own default
    /// threading (set it to one thread yourself, e.g. with its environment variable).
    Other,
}

/// An opened CBLAS library (see the module docs).
pub struct Blas {
    sgemm: SgemmFn,
    family: BlasFamily,
    name: String,
    file: Option<PathBuf>,
    version: Option<String>,
    /// What [`Blas::open`] set (threading, MKL's reproducibility mode), for [`Blas::describe`].
    setup: String,
    /// Held so that the library stays mapped; never dropped (see [`Blas::open`]).
    _lib: Library,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas")
            .field("family", &self.family)
            .field("name", &self.name)
            .field("file", &self.file)
            .field("version", &self.version)
            .finish()
    }
}

impl Blas {
    /// Opens `name` — a path, or a file name the dynamic loader looks up (`LD_LIBRARY_PATH`,
    /// the system directories) — resolves `cblas_sgemm`, and sets the library to run each
    /// call on the calling thread alone (see the module docs). The library stays loaded for
    /// the rest of the process: the returned reference is `'static`.
    pub fn open(name: &str) -> Result<&'static Blas, BlasError> {
        // SAFETY: loading runs the library's initialisers; a BLAS's only start a thread pool
        // and read its environment variables.
        let lib = unsafe { Library::new(name) }.map_err(|e| BlasError::Load {
            name: name.to_string(),
            // libloading's own message is only "dlopen failed"; dlerror's text is its source.
            reason: match std::error::Error::source(&e) {
                Some(detail) => detail.to_string(),
                None => e.to_string(),
            },
        })?;
        // SAFETY: cblas_sgemm has this signature in every CBLAS (LP64 ints); MKL's interface
        // layer is pinned to LP64 below before the first call.
        let sgemm = unsafe { lib.get::<SgemmFn>(b"cblas_sgemm\0") }
            .map(|s| *s)
            .map_err(|_| BlasError::NoSgemm {
                name: name.to_string(),
            })?;
        let family = if has(&lib, b"MKL_Get_Version_String\0") {
            BlasFamily::Mkl
        } else if has(&lib, b"openblas_get_config\0") {
            BlasFamily::OpenBlas
        } else if has(&lib, b"bli_info_get_version_str\0") {
            BlasFamily::Blis
        } else {
            BlasFamily::Other
        };
        // SAFETY: each vendor call below is resolved by its documented C name and called with
        // its documented signature; the MKL layer calls come before any other MKL call, as
        // MKL requires.
        let mut setup = Vec::new();
        unsafe {
            match family {
                BlasFamily::Mkl => {
                    call::<c_int>(&lib, b"MKL_Set_Interface_Layer\0", MKL_INTERFACE_LP64);
                    call::<c_int>(&lib, b"MKL_Set_Threading_Layer\0", MKL_THREADING_SEQUENTIAL);
                    setup.push("sequential".to_string());
                    if let Some(mode) = std::env::var_os("MKL_CBWR") {
                        setup.push(format!("MKL_CBWR={}", mode.to_string_lossy()));
                    } else if call::<c_int>(&lib, b"MKL_CBWR_Set\0", MKL_CBWR_AUTO) == Some(0) {
                        setup.push("CNR mode AUTO".to_string());
                    } else {
                        setup.push("CNR mode not set".to_string());
                    }
                }
                BlasFamily::OpenBlas => {
                    call::<()>(&lib, b"openblas_set_num_threads\0", 1);
                    setup.push("1 thread per call".to_string());
                }
                BlasFamily::Blis => {
                    // dim_t: a 64-bit integer in BLIS's default (and Debian's) builds.
                    if let Ok(f) =
                        lib.get::<unsafe extern "C" fn(i64)>(b"bli_thread_set_num_threads\0")
                    {
                        f(1);
                        setup.push("1 thread per call".to_string());
                    }
                }
                BlasFamily::Other => setup.push("its own threading".to_string()),
            }
        }
        let version = unsafe { version_of(&lib, family) };
        let file = file_of(sgemm as *const () as *const c_void);
        Ok(Box::leak(Box::new(Blas {
            sgemm,
            family,
            name: name.to_string(),
            file,
            version,
            setup: setup.join(", "),
            _lib: lib,
        })))
    }

    pub fn family(&self) -> BlasFamily {
        self.family
    }

    /// The library file the loader mapped (the target of a name or symbolic link), when it
    /// can tell; else the name given to [`Blas::open`].
    pub fn file(&self) -> String {
        match &self.file {
            Some(p) => p.display().to_string(),
            None => self.name.clone(),
        }
    }

    /// The library's own version line (OpenBLAS's build configuration, MKL's version
    /// string, BLIS's version), if it has one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// One line for logs and the bench: file, version, and what primer set.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}; {})",
            self.file(),
            self.version.as_deref().unwrap_or("no version call"),
            self.setup
        )
    }

    /// `c (m×n, row stride ldc) = alpha · op(a) · op(b) + beta · c`, row-major; `trans_a`
    /// means `a` is stored k×m (row stride lda), else m×k; likewise `b`. With `beta == 0`
    /// CBLAS does not read `c`.
    ///
    /// # Safety
    /// The pointers must address matrices of those shapes and row strides (each stride at
    /// least its row length), `c` overlapping neither input; every size must fit in a C `int`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda, trans_a): (*const f32, usize, bool),
        (b, ldb, trans_b): (*const f32, usize, bool),
        beta: f32,
        (c, ldc): (*mut f32, usize),
    ) {
        let t = |trans: bool| if trans { CBLAS_TRANS } else { CBLAS_NO_TRANS };
        // SAFETY: forwarded from the caller; the sizes fit in c_int (the caller's contract).
        unsafe {
            (self.sgemm)(
                CBLAS_ROW_MAJOR,
                t(trans_a),
                t(trans_b),
                m as c_int,
                n as c_int,
                k as c_int,
                alpha,
                a,
                lda as c_int,
                b,
                ldb as c_int,
                beta,
                c,
                ldc as c_int,
            )
        }
    }
}

fn has(lib: &Library, symbol: &[u8]) -> bool {
    // SAFETY: only the symbol's presence is looked at; nothing is called.
    unsafe { lib.get::<*const c_void>(symbol).is_ok() }
}

/// Calls `R f(int)` named `symbol`, if the library has it.
///
/// # Safety
/// `symbol` must name a C function taking one `int` and returning `R`.
unsafe fn call<R>(lib: &Library, symbol: &[u8], arg: c_int) -> Option<R> {
    // SAFETY: the caller's contract.
    unsafe {
        lib.get::<unsafe extern "C" fn(c_int) -> R>(symbol)
            .ok()
            .map(|f| f(arg))
    }
}

/// # Safety
/// `family` must be what [`Blas::open`] detected in `lib`.
unsafe fn version_of(lib: &Library, family: BlasFamily) -> Option<String> {
    let c_str = |p: *const c_char| {
        // SAFETY: the version calls return NUL-terminated static strings.
        (!p.is_null()).then(|| {
            unsafe { CStr::from_ptr(p) }
                .to_string_lossy()
                .trim()
                .to_string()
        })
    };
    // SAFETY: the documented signatures of each family's version calls.
    unsafe {
        match family {
            BlasFamily::Mkl => {
                let f = lib
                    .get::<unsafe extern "C" fn(*mut c_char, c_int)>(b"MKL_Get_Version_String\0")
                    .ok()?;
                let mut buf = [0 as c_char; 256];
                f(buf.as_mut_ptr(), buf.len() as c_int - 1);
                c_str(buf.as_ptr())
            }
            BlasFamily::OpenBlas => {
                let config = lib
                    .get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_config\0")
                    .ok()
                    .and_then(|f| c_str(f()))?;
                let core = lib
                    .get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_corename\0")
                    .ok()
                    .and_then(|f| c_str(f()));
                Some(match core {
                    Some(core) => format!("{config}, core {core}"),
                    None => config,
                })
            }
            BlasFamily::Blis => lib
                .get::<unsafe extern "C" fn() -> *const c_char>(b"bli_info_get_version_str\0")
                .ok()
                .and_then(|f| c_str(f()))
                .map(|v| format!("BLIS {v}")),
            BlasFamily::Other => None,
        }
    }
}

/// The file that holds the code at `addr` (the loader's answer for a resolved symbol).
fn file_of(addr: *const c_void) -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only writes into `info`; its strings live as long as the mapping, and
    // the library is never unloaded.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    let path = PathBuf::from(name.as_ref());
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_load_error_naming_it() {
        let err = Blas::open("/nonexistent/libnoblas.so").unwrap_err();
        assert!(matches!(err, BlasError::Load { .. }), "{err:?}");
        // The loader's own reason (which names the file again), not only that loading failed.
        assert_eq!(
            err.to_string().matches("/nonexistent/libnoblas.so").count(),
            2,
            "{err}"
        );
    }

    #[test]
    fn a_library_without_cblas_sgemm_is_refused() {
        // The C library is loaded in every process and is no BLAS.
        let err = Blas::open("libc.so.6").unwrap_err();
        assert!(matches!(err, BlasError::NoSgemm { .. }), "{err:?}");
        assert!(err.to_string().contains("libc.so.6"), "{err}");
    }
}
