//! One module per subcommand. Each computes a serialisable report and prints nothing.

pub mod attention;
pub mod embed;
pub mod generate;
pub mod kv_check;
pub mod lens;
pub mod logits;
pub mod model_info;
pub mod sample;
pub mod score;
pub mod similarity;
pub mod space;
pub mod tokenize;
pub mod trace;
