//! A probe of the AMX tile unit, for docs/performance.md ("Where the time goes"): how long the
//! tile work of one block of the long-prompt kernel takes (`src/model/amx.rs`: 2 x 2 C tiles, 8
//! tile loads, 12 `tdpbf16ps`), how long the AVX-512 work around it takes, and whether the two
//! overlap. Single thread, data in L1/L2, random bf16 values.
//!
//! `cargo bench --bench amx_probe` prints nanoseconds per block for each variant. On a machine
//! without AMX it says so and exits. Under `cargo test --all-targets` (scripts/test.sh) it runs
//! each variant briefly (a smoke test of the probe itself).

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod probe {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;

    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Tile([u8; 1024]);

    /// One block of the kernel: clear 4 C tiles, load 2 A and 6 B tiles (from `b`), 12
    /// products, and (with `STORE`) store the C tiles to `c`.
    #[inline(always)]
    unsafe fn block<const STORE: bool>(b: *const u8, c: *mut u8) {
        unsafe {
            asm!(
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "tileloadd tmm4, [{b} + {s}*1]", "tileloadd tmm5, [{b} + {s}*1 + 1024]",
                "tileloadd tmm6, [{b} + {s}*1 + 2048]", "tileloadd tmm7, [{b} + {s}*1 + 3072]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{b} + {s}*1 + 4096]", "tileloadd tmm7, [{b} + {s}*1 + 5120]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{b} + {s}*1 + 6144]", "tileloadd tmm7, [{b} + {s}*1 + 7168]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                b = in(reg) b, s = in(reg) 64usize, options(nostack, readonly),
            );
            if STORE {
                asm!(
                    "tilestored [{c} + {s}*1], tmm0", "tilestored [{c} + {s}*1 + 1024], tmm1",
                    "tilestored [{c} + {s}*1 + 2048], tmm2", "tilestored [{c} + {s}*1 + 3072], tmm3",
                    c = in(reg) c, s = in(reg) 64usize, options(nostack),
                );
            }
        }
    }

    /// The kernel's scaling of one block: 64 rows of 16 f32 `acc += d * C` (two loads, an FMA,
    /// a store each).
    #[target_feature(enable = "avx512f")]
    unsafe fn scale(c: *const f32, acc: *mut f32, d: *const f32) {
        for n in 0..32 {
            let scale = _mm512_set1_ps(unsafe { *d.add(n) });
            for t in 0..2 {
                let at = unsafe { acc.add(n * 32 + 16 * t) };
                let dots =
                    unsafe { _mm512_loadu_ps(c.add((2 * (n / 16) + t) * 256 + 16 * (n % 16))) };
                unsafe { _mm512_storeu_ps(at, _mm512_fmadd_ps(dots, scale, _mm512_loadu_ps(at))) };
            }
        }
    }

    /// 64 FMAs on registers only, in 8 independent chains.
    #[target_feature(enable = "avx512f")]
    unsafe fn register_fmas(x: [__m512; 8]) -> [__m512; 8] {
        let mut x = x;
        for _ in 0..8 {
            for v in x.iter_mut() {
                *v = _mm512_fmadd_ps(*v, _mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
            }
        }
        x
    }

    /// The five products of the folded variant (weights `d * q` in two bf16 parts), no stores.
    #[inline(always)]
    unsafe fn five_products(a: *const u8, b: *const u8) {
        unsafe {
            asm!(
                "tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tileloadd tmm6, [{b} + {s}*1 + 4096]", "tileloadd tmm7, [{b} + {s}*1 + 5120]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{b} + {s}*1 + 2048]", "tileloadd tmm7, [{b} + {s}*1 + 3072]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{a} + {s}*1 + 2048]", "tileloadd tmm5, [{a} + {s}*1 + 3072]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{b} + {s}*1]", "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                a = in(reg) a, b = in(reg) b, s = in(reg) 64usize, options(nostack, readonly),
            );
        }
    }

    /// Half a block: the products of the block's 32 weight rows (`a`, 2 tiles) with 16 inputs
    /// (`b`, 3 parts at 2 KiB apart) into C set X = tmm0, tmm1 or (`Y`) tmm2, tmm3.
    #[inline(always)]
    unsafe fn half<const Y: bool>(a: *const u8, b: *const u8) {
        unsafe {
            if Y {
                asm!(
                    "tilezero tmm2", "tilezero tmm3",
                    "tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                    "tileloadd tmm6, [{b} + {s}*1]",
                    "tdpbf16ps tmm2, tmm4, tmm6", "tdpbf16ps tmm3, tmm5, tmm6",
                    "tileloadd tmm6, [{b} + {s}*1 + 2048]",
                    "tdpbf16ps tmm2, tmm4, tmm6", "tdpbf16ps tmm3, tmm5, tmm6",
                    "tileloadd tmm6, [{b} + {s}*1 + 4096]",
                    "tdpbf16ps tmm2, tmm4, tmm6", "tdpbf16ps tmm3, tmm5, tmm6",
                    a = in(reg) a, b = in(reg) b, s = in(reg) 64usize, options(nostack, readonly),
                );
            } else {
                asm!(
                    "tilezero tmm0", "tilezero tmm1",
                    "tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                    "tileloadd tmm6, [{b} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm5, tmm6",
                    "tileloadd tmm6, [{b} + {s}*1 + 2048]",
                    "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm5, tmm6",
                    "tileloadd tmm6, [{b} + {s}*1 + 4096]",
                    "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm5, tmm6",
                    a = in(reg) a, b = in(reg) b, s = in(reg) 64usize, options(nostack, readonly),
                );
            }
        }
    }

    /// Stores C set X (tmm0, tmm1) or Y (tmm2, tmm3) to `c`.
    #[inline(always)]
    unsafe fn store_half<const Y: bool>(c: *mut u8) {
        unsafe {
            if Y {
                asm!("tilestored [{c} + {s}*1], tmm2", "tilestored [{c} + {s}*1 + 1024], tmm3",
                    c = in(reg) c, s = in(reg) 64usize, options(nostack));
            } else {
                asm!("tilestored [{c} + {s}*1], tmm0", "tilestored [{c} + {s}*1 + 1024], tmm1",
                    c = in(reg) c, s = in(reg) 64usize, options(nostack));
            }
        }
    }

    const VARIANTS: [&str; 9] = [
        "tile work of a block (12 products, C tiles stored)",
        "the same without storing the C tiles",
        "scaling a block's results, AVX-512 (acc += d * C, 64 rows)",
        "tile work, then the scaling",
        "64 FMAs on registers only",
        "tile work (no stores), then the 64 register FMAs",
        "folded variant: 20 products of one k-tile, no stores",
        "pipelined halves: one half's C stored while the other half's products run",
        "pipelined halves, then the scaling",
    ];

    /// Nanoseconds per block of variant v over `n` blocks.
    #[target_feature(enable = "avx512f")]
    unsafe fn run(v: usize, n: usize, tiles: &[Tile]) -> f64 {
        let p = tiles.as_ptr() as *const u8;
        let mut c = vec![Tile([0; 1024]); 4];
        let cp = c.as_mut_ptr() as *mut u8;
        let mut acc = vec![0f32; 1024];
        let d = [0.5f32; 32];
        let mut regs = [_mm512_set1_ps(1.0); 8];
        let start = Instant::now();
        for i in 0..n {
            // 18 blocks of 8 KiB, as in a 576-column row: L1 and L2.
            let b = unsafe { p.add((i % 18) * 8192) };
            unsafe {
                match v {
                    0 => block::<true>(b, cp),
                    1 => block::<false>(b, cp),
                    2 => scale(cp as *const f32, acc.as_mut_ptr(), d.as_ptr()),
                    3 => {
                        block::<true>(b, cp);
                        scale(cp as *const f32, acc.as_mut_ptr(), d.as_ptr());
                    }
                    4 => regs = register_fmas(regs),
                    5 => {
                        block::<false>(b, cp);
                        regs = register_fmas(regs);
                    }
                    6 => five_products(p.add(160 * 1024 + (i % 19) * 4096), b),
                    _ => {
                        // The block's inputs 0..16 into X; the previous block's Y stored (its
                        // products were queued before X's); inputs 16..32 into Y; X stored.
                        half::<false>(b, b.add(2048));
                        if i > 0 {
                            store_half::<true>(cp.add(2048));
                        }
                        half::<true>(b, b.add(3072));
                        store_half::<false>(cp);
                        if v == 8 {
                            scale(cp as *const f32, acc.as_mut_ptr(), d.as_ptr());
                        }
                    }
                }
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        std::hint::black_box((&acc, &regs, &c));
        ns
    }

    pub fn main(brief: bool) {
        if !lmscope::kernels::amx::available() {
            println!("amx_probe: no AMX here (or LMSCOPE_NO_AMX is set); nothing to measure");
            return;
        }
        // Random bf16 values in [-2, 2] (zeros run faster and would flatter the unit).
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut tiles = vec![Tile([0; 1024]); 256];
        for pair in tiles.iter_mut().flat_map(|t| t.0.chunks_exact_mut(2)) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0;
            pair.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
        }
        // SAFETY: AMX is available and this process may use it (checked above). The kernel's
        // configuration: all eight tiles 16 rows x 64 bytes; released when dropped.
        let _tiles = unsafe { lmscope::kernels::amx::TileRegisters::configure() };
        let (n, rounds) = if brief { (1000, 1) } else { (200_000, 3) };
        println!("amx_probe: ns per block, single thread, best of {rounds} rounds of {n} blocks");
        let mut best = [f64::MAX; VARIANTS.len()];
        for _ in 0..rounds {
            for (v, best) in best.iter_mut().enumerate() {
                // SAFETY: AMX and AVX-512 are available; the tiles are configured.
                *best = best.min(unsafe { run(v, n, &tiles) });
            }
        }
        for (name, ns) in VARIANTS.iter().zip(best) {
            println!("{ns:8.1} ns  {name}");
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs bench targets without it.
    let brief = !std::env::args().any(|a| a == "--bench");
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    probe::main(brief);
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    {
        let _ = brief;
        println!("amx_probe: AMX is x86-64 Linux only here; nothing to measure");
    }
}
