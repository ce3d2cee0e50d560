//! The CPU's arithmetic peak, for docs/performance.md ("AMD EPYC", "prefill without AMX"): how
//! many floating-point operations a second one core, and every core together, can do with
//!
//! * AVX2 FMA (`vfmadd231ps ymm`: 8 f32 multiply-adds),
//! * AVX-512 FMA (`vfmadd231ps zmm`: 16 f32 multiply-adds),
//! * AVX512-BF16 (`vdpbf16ps zmm`: 32 bf16 products summed into 16 f32 lanes), what PyTorch's
//!   bf16 matrix products run on CPUs that have it and no AMX.
//!
//! Each runs 12 independent accumulators in registers (enough to hide the latency of 2 FMA pipes
//! of 4-5 cycles), nothing from memory. A forward pass that does N operations can take no less
//! than N / peak: against lmscope's exact prefill (f32 products, the second figure) and
//! transformers bf16 (the third) this says how far each is from its own ceiling.
//!
//! `cargo bench --bench fma_probe` prints GFLOP/s per variant, one thread and all threads. Under
//! `cargo test --all-targets` (no `--bench`) each runs for a moment, as a test of the probe.

#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::asm;
    use std::time::Instant;

    /// `iters` rounds of 12 independent `vfmadd231ps` on ymm registers: 12 * 8 * 2 flops a round.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_ymm(iters: u64) {
        unsafe {
            asm!(
                "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
                "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
                "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
                "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
                "vxorps ymm12, ymm12, ymm12", "vxorps ymm13, ymm13, ymm13",
                "2:",
                "vfmadd231ps ymm0, ymm12, ymm13", "vfmadd231ps ymm1, ymm12, ymm13",
                "vfmadd231ps ymm2, ymm12, ymm13", "vfmadd231ps ymm3, ymm12, ymm13",
                "vfmadd231ps ymm4, ymm12, ymm13", "vfmadd231ps ymm5, ymm12, ymm13",
                "vfmadd231ps ymm6, ymm12, ymm13", "vfmadd231ps ymm7, ymm12, ymm13",
                "vfmadd231ps ymm8, ymm12, ymm13", "vfmadd231ps ymm9, ymm12, ymm13",
                "vfmadd231ps ymm10, ymm12, ymm13", "vfmadd231ps ymm11, ymm12, ymm13",
                "dec {n}", "jnz 2b",
                n = inout(reg) iters => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
                options(nostack, nomem),
            );
        }
    }

    /// The same on zmm registers: 12 * 16 * 2 flops a round.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_zmm(iters: u64) {
        unsafe {
            asm!(
                "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2",
                "vpxord zmm3, zmm3, zmm3", "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
                "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7", "vpxord zmm8, zmm8, zmm8",
                "vpxord zmm9, zmm9, zmm9", "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11",
                "vpxord zmm12, zmm12, zmm12", "vpxord zmm13, zmm13, zmm13",
                "2:",
                "vfmadd231ps zmm0, zmm12, zmm13", "vfmadd231ps zmm1, zmm12, zmm13",
                "vfmadd231ps zmm2, zmm12, zmm13", "vfmadd231ps zmm3, zmm12, zmm13",
                "vfmadd231ps zmm4, zmm12, zmm13", "vfmadd231ps zmm5, zmm12, zmm13",
                "vfmadd231ps zmm6, zmm12, zmm13", "vfmadd231ps zmm7, zmm12, zmm13",
                "vfmadd231ps zmm8, zmm12, zmm13", "vfmadd231ps zmm9, zmm12, zmm13",
                "vfmadd231ps zmm10, zmm12, zmm13", "vfmadd231ps zmm11, zmm12, zmm13",
                "dec {n}", "jnz 2b",
                n = inout(reg) iters => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
                options(nostack, nomem),
            );
        }
    }

    /// 12 independent `vdpbf16ps`: 12 * 32 * 2 flops a round.
    #[target_feature(enable = "avx512f")]
    unsafe fn dpbf16_zmm(iters: u64) {
        unsafe {
            asm!(
                "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2",
                "vpxord zmm3, zmm3, zmm3", "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
                "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7", "vpxord zmm8, zmm8, zmm8",
                "vpxord zmm9, zmm9, zmm9", "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11",
                "vpxord zmm12, zmm12, zmm12", "vpxord zmm13, zmm13, zmm13",
                "2:",
                "vdpbf16ps zmm0, zmm12, zmm13", "vdpbf16ps zmm1, zmm12, zmm13",
                "vdpbf16ps zmm2, zmm12, zmm13", "vdpbf16ps zmm3, zmm12, zmm13",
                "vdpbf16ps zmm4, zmm12, zmm13", "vdpbf16ps zmm5, zmm12, zmm13",
                "vdpbf16ps zmm6, zmm12, zmm13", "vdpbf16ps zmm7, zmm12, zmm13",
                "vdpbf16ps zmm8, zmm12, zmm13", "vdpbf16ps zmm9, zmm12, zmm13",
                "vdpbf16ps zmm10, zmm12, zmm13", "vdpbf16ps zmm11, zmm12, zmm13",
                "dec {n}", "jnz 2b",
                n = inout(reg) iters => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
                options(nostack, nomem),
            );
        }
    }

    pub struct Variant {
        pub name: &'static str,
        pub flops_per_round: f64,
        pub available: bool,
        pub run: fn(u64),
    }

    pub fn variants() -> Vec<Variant> {
        vec![
            Variant {
                name: "AVX2 FMA (f32, ymm)",
                flops_per_round: 12.0 * 8.0 * 2.0,
                available: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                // SAFETY: run only where `available` (checked above).
                run: |n| unsafe { fma_ymm(n) },
            },
            Variant {
                name: "AVX-512 FMA (f32, zmm)",
                flops_per_round: 12.0 * 16.0 * 2.0,
                available: is_x86_feature_detected!("avx512f"),
                // SAFETY: as above.
                run: |n| unsafe { fma_zmm(n) },
            },
            Variant {
                name: "AVX512-BF16 vdpbf16ps (bf16 products, f32 sums)",
                flops_per_round: 12.0 * 32.0 * 2.0,
                available: is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bf16"),
                // SAFETY: as above.
                run: |n| unsafe { dpbf16_zmm(n) },
            },
        ]
    }

    /// GFLOP/s of `v` on `threads` threads at once, each running `rounds` rounds; the best of
    /// `tries` (the peak is what the probe is after: a slower try was interrupted).
    pub fn gflops(v: &Variant, threads: usize, rounds: u64, tries: usize) -> f64 {
        (0..tries)
            .map(|_| {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| (v.run)(rounds));
                    }
                });
                v.flops_per_round * rounds as f64 * threads as f64 / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
            / 1e9
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // About 0.3 s a try on a 3 GHz core at full speed; a moment under `cargo test`.
    let (rounds, tries) = if bench { (50_000_000, 5) } else { (100_000, 1) };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(String::from))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    println!("{cpu}, {threads} threads");
    for v in probe::variants() {
        if !v.available {
            println!("{:<50} not on this CPU", v.name);
            continue;
        }
        let one = probe::gflops(&v, 1, rounds, tries);
        let all = probe::gflops(&v, threads, rounds, tries);
        println!(
            "{:<50} {one:>7.1} GFLOP/s one thread, {all:>7.1} GFLOP/s {threads} threads",
            v.name
        );
        assert!(one > 0.0 && all > 0.0, "{}: no time measured", v.name);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("fma_probe measures x86-64 vector units; nothing to measure on this architecture");
}
