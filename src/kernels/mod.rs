//! THE ENGINE ROOM: the fast kernels behind the forward pass's ops.
//!
//! `src/model/` is the textbook: every op there is first its formula on candle tensors. This
//! module is what makes those ops fast without changing what they compute: GGUF block matrices
//! multiplied without dequantizing them first, one file per instruction set, the fused row ops,
//! the written-out attention and the threads they run on. It depends on candle and std only and
//! never on `crate::model` or `crate::stages`.
//!
//! One switch picks the backend for the whole process: `LMSCOPE_KERNELS=reference|portable|
//! neon|avx2|avx512|amx` (default: the best this CPU runs). `reference` runs the whole pass on the
//! model's plain formulas; every other backend is tested against it, and every fast kernel
//! against its portable twin in [`portable`].
//!
//! | file | what |
//! |---|---|
//! | [`blocks`] | GGUF Q4_0 / Q4_1 / Q8_0 matrices in their memory-mapped blocks |
//! | [`half_precision`] | bf16 and f16: f32 arithmetic on 16-bit values, each op's output rounded |
//! | [`products`] | `x @ W.T` on block matrices: which kernel, in which parallel loop |
//! | [`matrix`] | [`Matrix`]: a weight in one of the forms lmscope multiplies by |
//! | [`rows`] | row-wise ops on f32 tensors in one parallel pass (RMSNorm, add, SwiGLU, RoPE, heads) |
//! | [`attention`] | softmax(q k^T / sqrt(d) + mask) v written out for f32, blocks of queries in parallel |
//! | [`portable`] | the plain-Rust kernels: the twins every SIMD kernel is tested against |
//! | `avx2` | x86-64 with AVX2, FMA and F16C: the AVX-512 kernels' design at 8 lanes |
//! | `avx512` | x86-64 with AVX-512 (F, BW) |
//! | `amx` | long inputs on Intel's AMX tiles (Linux) |
//! | `vnni` | `--quantized`: ggml's 8-bit arithmetic with AVX512-VNNI (and its AVX2 twin in `avx2`) |
//! | `neon` | aarch64 (Apple Silicon, ARM Linux) with NEON |
//! | [`team`] | the threads of the parallel loops |

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod blocks;
pub mod half_precision;
pub mod matrix;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod portable;
pub mod products;
pub mod rows;
pub mod team;
#[cfg(target_arch = "x86_64")]
pub mod vnni;

pub use matrix::Matrix;

use std::sync::OnceLock;

/// A set of kernels. Each includes `Portable` and `Reference` (which runs no kernel of this
/// module at all), and an x86 one the x86 ones before it: a CPU that runs `Amx` runs `Avx512`,
/// and so on down; `Neon` (aarch64) includes no x86 one (see [`Backend::includes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// The model's formulas on candle tensors, weights dequantized on load.
    Reference,
    /// lmscope's kernels in plain Rust (candle's GEMM for long inputs).
    Portable,
    /// aarch64's NEON kernels for the block products, attention, norms, SwiGLU and softmax.
    Neon,
    /// AVX2 and FMA kernels for the block products (decoding rows and long-prompt panels),
    /// attention, RMSNorm, SwiGLU and softmax.
    Avx2,
    /// AVX-512 kernels for the block products, attention, SwiGLU and softmax.
    Avx512,
    /// AVX-512, and long inputs' block products on AMX tiles.
    Amx,
}

impl Backend {
    /// Every backend, slowest first (of those of one architecture).
    pub const ALL: [Backend; 6] = [
        Backend::Reference,
        Backend::Portable,
        Backend::Neon,
        Backend::Avx2,
        Backend::Avx512,
        Backend::Amx,
    ];

    /// The name `LMSCOPE_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Portable => "portable",
            Backend::Neon => "neon",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Amx => "amx",
        }
    }

    pub fn parse(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name.trim().to_ascii_lowercase())
    }

    /// Whether this CPU (and operating system) runs the backend.
    pub fn available(self) -> bool {
        match self {
            Backend::Reference | Backend::Portable => true,
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => neon::available(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => avx2::available(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => avx512::available(),
            #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
            Backend::Amx => amx::available(),
            #[allow(unreachable_patterns)] // on targets without some of the arms above
            _ => false,
        }
    }

    /// Whether this backend runs `level`'s kernels too: every backend but `Reference` includes
    /// `Portable`, an x86 backend the x86 ones before it (`Amx` includes `Avx512` and `Avx2`),
    /// and `Neon` no other.
    pub fn includes(self, level: Backend) -> bool {
        match (self, level) {
            (_, Backend::Reference) => true,
            (Backend::Reference, _) => false,
            (_, Backend::Portable) => true,
            (a, b) if a == Backend::Neon || b == Backend::Neon => a == b,
            _ => self >= level,
        }
    }

    /// The fastest backend this CPU runs.
    pub fn best() -> Backend {
        Backend::ALL.into_iter().rev().find(|b| b.available()).unwrap_or(Backend::Portable)
    }

    /// The backends this CPU runs, slowest first.
    pub fn all_available() -> Vec<Backend> {
        Backend::ALL.into_iter().filter(|b| b.available()).collect()
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend `LMSCOPE_KERNELS` asks for (`LMSCOPE_NO_AMX=1`, the older switch, means the best
/// without AMX), or the best this CPU runs; an error naming the choices for an unknown name or
/// one this CPU does not run.
pub fn from_env() -> Result<Backend, String> {
    let requested = std::env::var("LMSCOPE_KERNELS").ok().filter(|v| !v.trim().is_empty());
    let Some(name) = requested else {
        let no_amx = std::env::var_os("LMSCOPE_NO_AMX").is_some_and(|v| !v.is_empty());
        let best = Backend::best();
        return Ok(if no_amx && best == Backend::Amx { Backend::Avx512 } else { best });
    };
    let names = |bs: Vec<Backend>| bs.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ");
    let backend = Backend::parse(&name).ok_or_else(|| {
        format!("LMSCOPE_KERNELS={name} is not a backend (one of {})", names(Backend::ALL.into()))
    })?;
    if !backend.available() {
        return Err(format!(
            "LMSCOPE_KERNELS={name}: this CPU does not run the {backend} kernels (it runs {})",
            names(Backend::all_available())
        ));
    }
    Ok(backend)
}

/// The backend of this process, chosen once, at the first call ([`from_env`], or the best this
/// CPU runs if the environment names none it can use; the binary reports that error first), or
/// the one [`with_backend`] set on this thread.
pub fn backend() -> Backend {
    static CHOSEN: OnceLock<Backend> = OnceLock::new();
    OVERRIDE
        .get()
        .unwrap_or_else(|| *CHOSEN.get_or_init(|| from_env().unwrap_or_else(|_| Backend::best())))
}

thread_local! {
    static OVERRIDE: std::cell::Cell<Option<Backend>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the ops called from this thread on `backend` (tests and benchmarks compare
/// backends in one process this way). Each op decides its kernels on the calling thread, before
/// it hands work to the team. A model whose matrices were loaded under another backend keeps
/// their form (the reference backend loads GGUF matrices dense).
pub fn with_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> R {
    assert!(backend.available(), "the {backend} kernels do not run on this CPU");
    struct Restore(Option<Backend>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.set(self.0);
        }
    }
    let _restore = Restore(OVERRIDE.replace(Some(backend)));
    f()
}

/// Whether this process's backend includes `level` (for example `uses(Backend::Avx512)` on an
/// AMX backend; see [`Backend::includes`]).
pub fn uses(level: Backend) -> bool {
    backend().includes(level)
}

/// Whether `--quantized` runs on lmscope's own 8-bit kernels here (AVX512-VNNI on the avx512 and
/// amx backends where the CPU has it, else AVX2 on those and the avx2 backend); else on candle's
/// quantized matmul, whose Q4_1 product is scalar code.
pub fn has_int8_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    if uses(Backend::Avx2) {
        return avx2::available();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_by_name_and_include_the_ones_below() {
        for b in Backend::ALL {
            assert_eq!(Backend::parse(b.name()), Some(b));
        }
        assert_eq!(Backend::parse(" AVX2 "), Some(Backend::Avx2));
        assert_eq!(Backend::parse("sse9"), None);
        assert!(Backend::Reference.available() && Backend::Portable.available());
        // A CPU that runs a backend runs every backend it includes.
        let available = Backend::all_available();
        for b in &available {
            for level in Backend::ALL.into_iter().filter(|&l| b.includes(l)) {
                assert!(level.available(), "{b} runs but {level} does not");
            }
        }
        assert_eq!(Backend::best(), *available.last().unwrap());
        assert!(available.iter().all(|b| Backend::best().includes(*b)), "{available:?}");
        // NEON and the x86 backends include each other's kernels nowhere.
        for x86 in [Backend::Avx2, Backend::Avx512, Backend::Amx] {
            assert!(!Backend::Neon.includes(x86) && !x86.includes(Backend::Neon));
            assert!(x86.includes(Backend::Portable) && Backend::Amx.includes(x86));
        }
        assert!(
            Backend::Neon.includes(Backend::Portable)
                && !Backend::Reference.includes(Backend::Portable)
        );
        // The default on aarch64 is NEON, on x86-64 never.
        assert_eq!(Backend::best() == Backend::Neon, cfg!(target_arch = "aarch64"));
    }
}
