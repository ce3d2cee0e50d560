//! lmscope: watch a Llama-family language model generate text one stage at a time.
//!
//! text -> [`tokenizer`] -> token ids -> embeddings -> [`model::llama`] -> logits -> next token.
//! The model is a textbook page ([`model`], the student's room); the kernels that make it fast
//! live apart ([`kernels`], the engine room).
//! Each subcommand of the binary is one [`stages`] function that returns a serialisable report;
//! [`render`] writes it as a table or as JSON to a writer.

pub mod app;
pub mod chat;
pub mod cli;
pub mod config;
pub mod gguf;
pub mod hub;
pub mod input;
pub mod interrupt;
pub mod kernels;
pub mod load;
pub mod model;
pub mod progress;
pub mod render;
pub mod repl;
pub mod sampling;
pub mod source;
pub mod stages;
pub mod text;
pub mod timings;
pub mod tokenizer;

/// Asks glibc's malloc to keep freed memory for the next allocation instead of handing it back
/// to the kernel: every matrix product of a long prompt allocates a fresh output of up to a few
/// megabytes, and fresh pages cost a page fault each (a tenth of a millisecond per product).
/// lmscope is a short-lived process whose peak memory is the model's, so nothing is lost. The
/// binary calls this first thing; so do the benchmarks, to time what the binary runs.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; meant to be called first thing,
    // before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
