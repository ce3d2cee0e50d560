//! One module per subcommand. Each computes a serialisable report and prints nothing.

pub mod embed;
pub mod generate;
pub mod logits;
pub mod model_info;
pub mod similarity;
pub mod tokenize;
pub mod attention;
pub mod kv_check;
pub mod lens;
