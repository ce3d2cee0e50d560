//! The one place that formats output: tables (comfy-table) for people, JSON for programs, written
//! to a writer the caller passes in (stdout for the binary, a `Vec<u8>` in tests).

use crate::stages::embed::EmbedReport;
use crate::stages::generate::{ArgmaxReport, GenerateReport, Step};
use crate::stages::logits::LogitsReport;
use crate::stages::model_info::ModelReport;
use crate::stages::similarity::SimilarityReport;
use crate::stages::tokenize::TokenizeReport;
use crate::text::{count, number, visible, visible_bytes};
use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, ContentArrangement, Table};
use serde::Serialize;
use std::io::Write;

mod sample;
mod score;
mod space;
pub use sample::*;
pub use score::*;
pub use space::*;
mod attention;
mod kv_check;
mod lens;
pub mod shade;
pub use attention::attention;
pub use kv_check::kv_check;
pub use lens::lens;
mod trace;
mod trace_html;
pub use trace::trace;
pub use trace_html::trace_html;

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Prints any report: JSON as one document, otherwise the given human rendering.
fn emit<T: Serialize>(
    out: &mut dyn Write,
    format: Format,
    report: &T,
    human: impl FnOnce() -> String,
) -> Result<()> {
    let _t = crate::timings::span("report");
    let text = match format {
        Format::Json => serde_json::to_string_pretty(report)?,
        Format::Human => human(),
    };
    writeln!(out, "{}", text.trim_end())?;
    out.flush()?;
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    t
}

fn right(t: &mut Table, columns: &[usize]) {
    for &c in columns {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// One line explaining GPT-2's `Ġ` convention, shown when a token uses it.
const G_NOTE: &str =
    "note: Ġ in a token stands for a space (byte-level BPE maps bytes to printable characters; Ċ is a newline)";

fn uses_g(tokens: impl IntoIterator<Item = impl AsRef<str>>) -> bool {
    tokens.into_iter().any(|t| t.as_ref().contains(['Ġ', 'Ċ']))
}

pub fn tokenize(out: &mut dyn Write, format: Format, r: &TokenizeReport) -> Result<()> {
    emit(out, format, r, || {
        let mut t = table(&["#", "id", "token", "text", "offsets"]);
        for (i, tok) in r.tokens.iter().enumerate() {
            let token =
                if tok.special { format!("{} (special)", tok.token) } else { tok.token.clone() };
            let span = match (tok.start, tok.end) {
                (Some(s), Some(e)) => format!("{s}..{e}"),
                _ => "-".into(),
            };
            t.add_row(vec![
                i.to_string(),
                tok.id.to_string(),
                token,
                visible_bytes(&tok.bytes),
                span,
            ]);
        }
        right(&mut t, &[0, 1]);
        let mut s = String::new();
        if let Some(input) = &r.input {
            s += &format!("text:      {}\n", visible(input));
        }
        s += &format!("input_ids: {:?}\n", r.ids);
        s += &format!("tokens:    {}\n", r.count);
        s += &format!("{t}\n");
        s += &format!("decoded:   {}", visible(&r.decoded));
        match r.round_trip {
            Some(true) => s += "  (identical to the input)\n",
            Some(false) => {
                s += "  (differs from the input: this tokenizer does not keep every byte; bytes with no token in the vocabulary are dropped, as in transformers)\n"
            }
            None => s += "\n",
        }
        if uses_g(r.tokens.iter().map(|t| &t.token)) {
            s += G_NOTE;
        }
        s
    })
}

/// How many logit rows `logits` shows at each end of a long prompt, as PyTorch's print does.
const PREVIEW_ROWS: usize = 3;

pub fn logits(out: &mut dyn Write, format: Format, r: &LogitsReport) -> Result<()> {
    emit(out, format, r, || {
        let mut s = format!(
            "logits shape: [{}, {}, {}]  (batch, tokens, vocabulary)\n",
            r.shape[0], r.shape[1], r.shape[2]
        );
        let f = |v: &[f32]| v.iter().map(|x| format!("{x:9.4}")).collect::<Vec<_>>().join(", ");
        // As PyTorch prints a large tensor: the first and last rows, `...` for the rest (and
        // the ranked row wherever it is).
        let n = r.rows.len();
        let shown = |p: usize| {
            n <= 2 * PREVIEW_ROWS || p < PREVIEW_ROWS || p >= n - PREVIEW_ROWS || p == r.position
        };
        let mut left_out = 0;
        for row in &r.rows {
            if !shown(row.position) {
                left_out += 1;
                continue;
            }
            if left_out > 0 {
                s += &format!(
                    "  ...  ({} left out; --json lists every row)\n",
                    count(left_out, "row")
                );
                left_out = 0;
            }
            // ">" marks the row that is ranked below.
            let mark = if row.position == r.position { ">" } else { " " };
            s += &format!(
                "{mark} {:>3} {:<14} [{}, ..., {}]\n",
                row.position,
                visible(&row.text),
                f(&row.first),
                f(&row.last)
            );
        }
        s += &format!(
            "next-token ranking after position {} ({}):\n",
            r.position,
            visible(&r.position_token)
        );
        let mut header = vec!["rank", "id", "token", "text", "logit", "prob", "log-prob"];
        let t_header = r.temperature.map(|t| format!("prob at T={}", number(t)));
        if let Some(h) = &t_header {
            header.push(h);
        }
        let mut t = table(&header);
        for x in &r.top {
            let mut row = vec![
                x.rank.to_string(),
                x.id.to_string(),
                x.token.clone(),
                visible_bytes(&x.bytes),
                format!("{:.4}", x.logit),
                format!("{:.4}", x.prob),
                format!("{:.4}", x.logprob),
            ];
            if let Some(p) = x.prob_at_temperature {
                row.push(format!("{p:.4}"));
            }
            t.add_row(row);
        }
        right(&mut t, &[0, 1, 4, 5, 6, 7]);
        s += &format!("{t}\n");
        if uses_g(r.top.iter().map(|t| &t.token)) {
            s += G_NOTE;
        }
        s
    })
}

pub fn argmax(out: &mut dyn Write, format: Format, r: &ArgmaxReport) -> Result<()> {
    emit(out, format, r, || {
        let mut s = format!(
            "argmax: id {} = {} ({}), probability {:.4}\n",
            r.id,
            r.token,
            visible(&r.steps[0].text),
            r.prob
        );
        if r.steps.len() > 1 {
            s += &steps_table(&r.steps);
            s.push('\n');
        }
        s += &format!("text: {}\n", r.shown);
        if uses_g(r.steps.iter().map(|t| &t.token)) {
            s += G_NOTE;
        }
        s
    })
}

const SAMPLE_NOTE: &str = "note: prob is the model's probability (temperature 1); drawn with is the probability the sampler drew the token with; runner-up is the most likely token not drawn";

/// One row per generated token: what was chosen, how likely, and the best alternative.
fn steps_table(steps: &[Step]) -> String {
    let sampled = steps.iter().any(|s| s.sample_prob.is_some());
    let mut header = vec!["step", "id", "token", "text", "prob"];
    if sampled {
        header.push("drawn with");
    }
    header.extend(["runner-up", "runner-up prob"]);
    let mut t = table(&header);
    for (i, st) in steps.iter().enumerate() {
        let mut row = vec![
            (i + 1).to_string(),
            st.id.to_string(),
            st.token.clone(),
            visible_bytes(&st.bytes),
            format!("{:.4}", st.prob),
        ];
        if let Some(p) = st.sample_prob {
            row.push(format!("{p:.4}"));
        }
        row.extend([st.runner_up_token.clone(), format!("{:.4}", st.runner_up_prob)]);
        t.add_row(row);
    }
    let mut numeric = vec![0, 1, 4, header.len() - 1];
    if sampled {
        numeric.push(5);
    }
    right(&mut t, &numeric);
    t.to_string()
}

pub fn embed(out: &mut dyn Write, format: Format, r: &EmbedReport) -> Result<()> {
    emit(out, format, r, || {
        let mut s = format!(
            "embedding matrix: [{}, {}]  (vocabulary, hidden size)\n",
            r.shape[0], r.shape[1]
        );
        if r.leading_space {
            s += "words are looked up after a space (\" dog\"), as the notebook's get_id does; --exact turns this off\n";
        }
        let mut t = table(&["word", "ids", "tokens", "norm", &format!("first {} values", r.dims)]);
        for w in &r.words {
            let values: Vec<String> = w.vector.iter().map(|v| format!("{v:.4}")).collect();
            let pooled = if w.pooled { " (mean)" } else { "" };
            t.add_row(vec![
                w.lookup.word.clone(),
                format!("{:?}", w.lookup.ids),
                format!("{}{pooled}", w.lookup.tokens.join(" ")),
                format!("{:.4}", w.norm),
                values.join(", "),
            ]);
        }
        t.set_content_arrangement(ContentArrangement::Dynamic);
        s += &format!("{t}\n");
        s
    })
}

pub fn similarity(out: &mut dyn Write, format: Format, r: &SimilarityReport) -> Result<()> {
    emit(out, format, r, || {
        let mut s = String::from(
            "cosine similarity of input embeddings (1 = same direction, 0 = unrelated, -1 = opposite)\n",
        );
        if r.words.len() == 2 {
            let mut t = table(&["a", "b", "cosine"]);
            for p in &r.pairs {
                t.add_row(vec![p.a.clone(), p.b.clone(), format!("{:.6}", p.cosine)]);
            }
            right(&mut t, &[2]);
            s += &format!("{t}\n");
        } else {
            let mut header = vec![String::new()];
            header.extend(r.words.iter().map(|w| w.word.clone()));
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let mut t = table(&header);
            for (w, row) in r.words.iter().zip(&r.matrix) {
                let mut cells = vec![w.word.clone()];
                cells.extend(row.iter().map(|c| format!("{c:.4}")));
                t.add_row(cells);
            }
            right(&mut t, &(1..=r.words.len()).collect::<Vec<_>>());
            s += &format!("{t}\n");
        }
        let looked: Vec<String> = r
            .words
            .iter()
            .map(|w| format!("{} = {:?} {:?}", visible(&w.looked_up), w.tokens, w.ids))
            .collect();
        s += &format!("tokens: {}\n", looked.join(", "));
        s
    })
}

pub fn model(out: &mut dyn Write, format: Format, r: &ModelReport) -> Result<()> {
    emit(out, format, r, || {
        let c = &r.config;
        let p = &r.parameters;
        let mut s = format!("{}\n\n", r.tree);
        let mut t = table(&["config", "value"]);
        let rows: Vec<(&str, String)> = vec![
            ("architecture", c.architecture.clone()),
            ("vocab_size", c.vocab_size.to_string()),
            ("hidden_size", c.hidden_size.to_string()),
            ("intermediate_size", c.intermediate_size.to_string()),
            ("num_hidden_layers", c.num_hidden_layers.to_string()),
            ("num_attention_heads", c.num_attention_heads.to_string()),
            ("num_key_value_heads", c.num_key_value_heads.to_string()),
            ("head_dim", c.head_dim.to_string()),
            ("max_position_embeddings", c.max_position_embeddings.to_string()),
            ("rms_norm_eps", crate::stages::model_info::python_float(c.rms_norm_eps)),
            ("rope_theta", crate::stages::model_info::python_float(c.rope_theta)),
            ("tie_word_embeddings", c.tie_word_embeddings.to_string()),
            ("bos_token_id", c.bos_token_id.map_or("none".into(), |v| v.to_string())),
            ("eos_token_ids", format!("{:?}", c.eos_token_ids)),
            ("stored dtype", c.stored_dtype.clone().unwrap_or_else(|| "unknown".into())),
            ("compute dtype", r.dtype.clone()),
            ("matrices", r.matrices.clone()),
            ("kernels", format!("{} (LMSCOPE_KERNELS)", r.kernels)),
        ];
        for (k, v) in rows {
            t.add_row(vec![k.to_string(), v]);
        }
        s += &format!("{t}\n\n");
        let mut t = table(&["parameters", "count"]);
        let n = c.num_hidden_layers;
        let head = if p.tied { "0 (tied to embed_tokens)".to_string() } else { group(p.lm_head) };
        let rows: Vec<(String, String)> = vec![
            ("embed_tokens".into(), group(p.embed_tokens)),
            ("attention per layer (q, k, v, o)".into(), group(p.attention_per_layer)),
            ("mlp per layer (gate, up, down)".into(), group(p.mlp_per_layer)),
            ("norms per layer".into(), group(p.norms_per_layer)),
            (format!("all {n} layers"), group(p.layers)),
            ("final norm".into(), group(p.norm)),
            ("lm_head".into(), head),
            ("total".into(), group(p.total)),
        ];
        for (k, v) in rows {
            t.add_row(vec![k, v]);
        }
        right(&mut t, &[1]);
        s += &format!("{t}\n");
        s += &format!("weights: {}\n", r.origin);
        s
    })
}

/// 134515008 -> "134,515,008"
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Prints generated text as it is produced, holding back bytes until they form whole UTF-8
/// characters (a token can end in the middle of one).
pub struct TextStream<'a> {
    out: &'a mut dyn Write,
    /// The prompt, printed with the first token (so an error before it prints nothing).
    prompt: Option<String>,
    pending: Vec<u8>,
}

impl<'a> TextStream<'a> {
    pub fn new(out: &'a mut dyn Write, prompt: &str) -> Self {
        TextStream { out, prompt: Some(prompt.to_string()), pending: Vec::new() }
    }

    pub fn push(&mut self, step: &Step) -> Result<()> {
        if let Some(prompt) = self.prompt.take() {
            write!(self.out, "{prompt}")?;
        }
        self.pending.extend_from_slice(&step.bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            // An incomplete character at the end waits for the next token; garbage does not.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        write!(self.out, "{text}")?;
        self.out.flush()?;
        Ok(())
    }

    /// Ends the stream line and prints the summary (and the steps table when asked).
    pub fn finish(self, r: &GenerateReport, show_steps: bool) -> Result<()> {
        let out = self.out;
        writeln!(out, "{}", String::from_utf8_lossy(&self.pending))?;
        let mut summary = format!(
            "\n[{}, {}, stopped at {}",
            count(r.new_ids.len(), "new token"),
            r.strategy,
            r.stopped.replace('_', "-")
        );
        if let Some(seed) = r.seed {
            summary += &format!(", seed {seed}");
        }
        writeln!(out, "{summary}]")?;
        if show_steps {
            writeln!(out, "{}", steps_table(&r.steps))?;
            if r.seed.is_some() {
                writeln!(out, "{SAMPLE_NOTE}")?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

pub fn generate(out: &mut dyn Write, r: &GenerateReport) -> Result<()> {
    emit(out, Format::Json, r, String::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;
    use std::path::Path;

    fn tiny_tokenizer() -> Tokenizer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Tokenizer::from_file(&root.join("fixtures/tiny-llama/tokenizer.json")).unwrap()
    }

    /// A printer writes to the writer it is given: the table the binary prints (its golden file)
    /// comes out of a `Vec<u8>` too, and the JSON document parses.
    #[test]
    fn printers_write_to_the_given_writer() {
        let r = crate::stages::tokenize::from_text(&tiny_tokenizer(), "The capital of Finland is")
            .unwrap();
        let mut out = Vec::new();
        tokenize(&mut out, Format::Human, &r).unwrap();
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tokenize.txt");
        assert_eq!(String::from_utf8(out).unwrap(), std::fs::read_to_string(golden).unwrap());
        let mut out = Vec::new();
        tokenize(&mut out, Format::Json, &r).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["ids"], serde_json::json!([277, 308, 279, 446, 275]));
    }

    /// Generated text streams through the writer, whole characters only, the prompt first.
    #[test]
    fn the_text_stream_holds_back_partial_characters() {
        let step = |bytes: &[u8]| Step {
            id: 0,
            token: String::new(),
            text: String::new(),
            bytes: bytes.to_vec(),
            logit: 1.0,
            prob: 0.5,
            runner_up_id: 1,
            runner_up_token: String::new(),
            runner_up_text: String::new(),
            runner_up_prob: 0.25,
            sample_prob: None,
        };
        let mut out = Vec::new();
        let mut stream = TextStream::new(&mut out, "Hi");
        stream.push(&step(b" \xF0\x9F")).unwrap(); // the first half of an emoji
        stream.push(&step(b"\x98\x80!")).unwrap();
        drop(stream);
        assert_eq!(String::from_utf8(out).unwrap(), "Hi \u{1F600}!");
    }
}
