//! One module per subcommand. Each computes a serialisable report and prints nothing.

pub mod logits;
pub mod tokenize;
