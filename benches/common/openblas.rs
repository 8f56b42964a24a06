//! OpenBLAS's `cblas_sgemm` as a peer of the f32 GEMM (feature
//! `openblas-peer`): Debian's `libopenblas-dev`, linked by name, declared
//! here by hand so that the crate needs no `build.rs` and no binding crate.
//! Shared by `benches/gemm.rs` and `examples/report`.
//!
//! OpenBLAS reads `OPENBLAS_NUM_THREADS` once, when the library loads, so
//! each call sets its thread count through `openblas_set_num_threads`
//! instead. Debian builds it for every x86-64 core kind and picks one at
//! load time (see `core_name`); `OPENBLAS_CORETYPE=Haswell` makes it use
//! its AVX2 kernels on an AVX-512 machine, to compare with halfkern's
//! `avx2`.

use std::ffi::{CStr, c_char, c_float, c_int};

#[link(name = "openblas")]
unsafe extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: c_float,
        a: *const c_float,
        lda: c_int,
        b: *const c_float,
        ldb: c_int,
        beta: c_float,
        c: *mut c_float,
        ldc: c_int,
    );
    fn openblas_set_num_threads(threads: c_int);
    fn openblas_get_corename() -> *const c_char;
    fn openblas_get_config() -> *const c_char;
}

/// `CblasRowMajor` and `CblasNoTrans` of cblas.h.
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;

/// `c = a b` for row-major `m x k` a, `k x n` b and `m x n` c, on
/// `threads` threads.
///
/// # Panics
///
/// When a slice's length does not match its shape, or a size exceeds
/// `c_int`.
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let int = |x: usize| c_int::try_from(x).expect("size fits a C int");
    // SAFETY: the library's own functions, called as cblas.h declares
    // them; the three buffers hold exactly the row-major shapes given
    // (asserted above), with leading dimensions k, n and n.
    unsafe {
        openblas_set_num_threads(int(threads));
        cblas_sgemm(
            ROW_MAJOR,
            NO_TRANS,
            NO_TRANS,
            int(m),
            int(n),
            int(k),
            1.0,
            a.as_ptr(),
            int(k).max(1),
            b.as_ptr(),
            int(n).max(1),
            0.0,
            c.as_mut_ptr(),
            int(n).max(1),
        );
    }
}

/// The kernel set OpenBLAS chose for this CPU at load time, such as
/// `Haswell` or `SkylakeX`.
pub fn core_name() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated name.
    unsafe { owned(openblas_get_corename()) }
}

/// The library's version and build, such as `OpenBLAS 0.3.21 DYNAMIC_ARCH
/// NO_AFFINITY Haswell MAX_THREADS=64`.
pub fn config() -> String {
    // SAFETY: as in `core_name`.
    unsafe { owned(openblas_get_config()) }
}

/// `OpenBLAS 0.3.21 (Haswell)`: the version and the kernels in use.
pub fn label() -> String {
    let config = config();
    let version = config
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{version} ({})", core_name())
}

/// # Safety
///
/// `p` is null or points to a NUL-terminated string that outlives the call.
unsafe fn owned(p: *const c_char) -> String {
    if p.is_null() {
        return "unknown".into();
    }
    // SAFETY: non-null (checked above) and NUL-terminated (the caller's
    // promise).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
