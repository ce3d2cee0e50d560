//! THE STUDENT'S ROOM: the Llama model as a textbook page, on candle tensors.
//!
//! Read in this order: [`llama`] (the forward pass, top to bottom), [`attention`] (self-attention,
//! RoPE, the KV cache), [`ops`] (every op as its formula), [`capture`] (what the inspection
//! commands record), [`weights`] (the named tensors). Nothing here needs the compiler's trust or is specific to a
//! processor: the fast kernels behind the ops are the engine room's, `src/kernels/`, and a test
//! (tests/architecture.rs) keeps it so.

pub mod attention;
pub mod capture;
pub mod llama;
pub mod ops;
pub mod weights;

pub use attention::KvCache;
pub use capture::Capture;
pub use llama::{softmax_f64, Llama};
pub use weights::Weights;
