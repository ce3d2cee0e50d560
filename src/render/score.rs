//! `lmscope score`: one table of scored tokens per text, then the candidates side by side.

use super::{emit, right, table, Format};
use crate::stages::score::{ScoreReport, TextScore};
use crate::text::{count, visible, visible_bytes};
use anyhow::Result;
use std::fmt::Write as _;
use std::io::Write;

/// A token's bytes for a narrow column: visible, and cut to `max` characters.
pub(super) fn short(bytes: &[u8], max: usize) -> String {
    let v = visible_bytes(bytes);
    if v.chars().count() <= max {
        return v;
    }
    let cut: String = v.chars().take(max - 1).collect();
    format!("{cut}…")
}

const UNITS: &str = "log-prob: natural log of p; bits: the surprisal -log2 p; rank 1 = the model's top choice there; entropy: of the whole next-token distribution there, in bits";

fn one(s: &mut String, r: &TextScore) {
    let scored = count(r.tokens.len(), "token");
    match &r.prompt {
        Some(p) => {
            let _ = writeln!(
                s,
                "scoring {} after the prompt {} ({} given, not scored)",
                visible(&r.text),
                visible(p),
                count(r.unscored.len(), "token")
            );
        }
        None => {
            let first = &r.unscored[0];
            let _ = writeln!(
                s,
                "scoring {} ({scored} after the first)\nthe first token {} (id {}) is not scored: nothing precedes it (no BOS token is added), so the model makes no prediction for it",
                visible(&r.text),
                visible(&first.text),
                first.id
            );
        }
    }
    let mut t = table(&["pos", "token", "log-prob", "prob", "bits", "rank", "top", "entropy"]);
    for x in &r.tokens {
        t.add_row(vec![
            x.position.to_string(),
            short(&x.bytes, 12),
            format!("{:.4}", x.logprob),
            format!("{:.4}", x.prob),
            format!("{:.2}", x.surprisal_bits),
            x.rank.to_string(),
            short(&x.top_bytes, 12),
            format!("{:.2}", x.entropy / std::f64::consts::LN_2),
        ]);
    }
    right(&mut t, &[0, 2, 3, 4, 5, 7]);
    let _ = writeln!(s, "{t}");
    let _ = writeln!(
        s,
        "total log-prob {:.4} over {scored} (p = {:.4e}), mean {:.4}, perplexity {:.2}",
        r.total_logprob,
        r.total_logprob.exp(),
        r.mean_logprob,
        r.perplexity
    );
}

pub fn score(out: &mut dyn Write, format: Format, r: &ScoreReport) -> Result<()> {
    emit(out, format, r, || {
        let mut s = String::new();
        match r {
            ScoreReport::One(one_score) => one(&mut s, one_score),
            ScoreReport::Many { prompt, candidates, best, best_mean } => {
                for c in candidates {
                    one(&mut s, c);
                    s.push('\n');
                }
                let after =
                    prompt.as_ref().map_or(String::new(), |p| format!(" after {}", visible(p)));
                let _ = writeln!(s, "the candidates{after}:");
                let mut t = table(&["#", "text", "tokens", "log-prob", "p", "mean", "perplexity"]);
                for (i, c) in candidates.iter().enumerate() {
                    t.add_row(vec![
                        (i + 1).to_string(),
                        short(c.text.as_bytes(), 20),
                        c.tokens.len().to_string(),
                        format!("{:.4}", c.total_logprob),
                        format!("{:.4e}", c.total_logprob.exp()),
                        format!("{:.4}", c.mean_logprob),
                        format!("{:.2}", c.perplexity),
                    ]);
                }
                right(&mut t, &[0, 2, 3, 4, 5, 6]);
                let _ = writeln!(s, "{t}");
                let b = &candidates[*best];
                let _ = write!(
                    s,
                    "most likely: {} (log-prob {:.4})",
                    visible(&b.text),
                    b.total_logprob
                );
                if best_mean == best {
                    s += ", also per token (mean log-prob)\n";
                } else {
                    let m = &candidates[*best_mean];
                    let _ = writeln!(
                        s,
                        "; per token (mean log-prob) {} ({:.4}): a longer text pays for every extra token",
                        visible(&m.text),
                        m.mean_logprob
                    );
                }
            }
        }
        s += UNITS;
        s
    })
}
