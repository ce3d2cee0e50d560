//! `lmscope score`: one table of scored tokens per text, then the candidates side by side.

use super::{emit, right, table, Format};
use crate::stages::score::{ScoreReport, TextScore};
use crate::text::{count, unbroken, visible, visible_bytes, wrap};
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

/// The words the texts all start with (up to a space that begins the next word in each), or ""
/// when that is short or some text is nothing more.
fn common_start<'a>(texts: &[&'a str]) -> &'a str {
    let Some((first, rest)) = texts.split_first() else { return "" };
    let mut len = first.len();
    for t in rest {
        len = first.bytes().zip(t.bytes()).take(len).take_while(|(a, b)| a == b).count();
    }
    // Back to a word boundary: the next character of every text is a space.
    while len > 0
        && !(first.is_char_boundary(len)
            && texts.iter().all(|t| t.len() > len && t.as_bytes()[len] == b' '))
    {
        len -= 1;
    }
    if first[..len].chars().count() < 8 {
        return "";
    }
    &first[..len]
}

/// The notes under the tables are wrapped at this many columns.
pub const NOTE_WIDTH: usize = 80;

const UNITS: &str = "log-prob: natural log of p; bits: the surprisal -log2 p; rank 1 = the model's top choice there; entropy: of the whole next-token distribution there, in bits";

fn one(s: &mut String, r: &TextScore) {
    let scored = count(r.tokens.len(), "token");
    match &r.prompt {
        Some(p) => {
            let line = format!(
                "scoring {} after the prompt {} ({} given, not scored)",
                unbroken(&visible(&r.text)),
                unbroken(&visible(p)),
                count(r.unscored.len(), "token")
            );
            let _ = writeln!(s, "{}", wrap(&line, NOTE_WIDTH));
        }
        None => {
            let first = &r.unscored[0];
            let line =
                format!("scoring {} ({scored} after the first)", unbroken(&visible(&r.text)));
            let why = format!(
                "the first token {} (id {}) is not scored: nothing precedes it (no BOS token is added), so the model makes no prediction for it",
                unbroken(&visible(&first.text)),
                first.id
            );
            let _ = writeln!(s, "{}\n{}", wrap(&line, NOTE_WIDTH), wrap(&why, NOTE_WIDTH));
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
    // Each figure stays on one line with its name.
    let total = format!(
        "total {} over {scored} {} {} {}",
        unbroken(&format!("log-prob {:.4}", r.total_logprob)),
        unbroken(&format!("(p = {:.4e}),", r.total_logprob.exp())),
        unbroken(&format!("mean {:.4},", r.mean_logprob)),
        unbroken(&format!("perplexity {:.2}", r.perplexity))
    );
    let _ = writeln!(s, "{}", wrap(&total, NOTE_WIDTH));
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
                // Texts that start alike (no --prompt) are told apart by what follows the start.
                let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
                let start = if prompt.is_none() { common_start(&texts) } else { "" };
                let after = match prompt {
                    Some(p) => format!(" after {}", visible(p)),
                    None if !start.is_empty() => {
                        format!(", each after their common start {}", visible(start))
                    }
                    None => String::new(),
                };
                let _ = writeln!(s, "the candidates{after}:");
                let mut t = table(&["#", "text", "tokens", "log-prob", "p", "mean", "perplexity"]);
                for (i, c) in candidates.iter().enumerate() {
                    t.add_row(vec![
                        (i + 1).to_string(),
                        short(&c.text.as_bytes()[start.len()..], 16),
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
        s += &wrap(UNITS, NOTE_WIDTH);
        s
    })
}

#[cfg(test)]
mod tests {
    use super::common_start;

    #[test]
    fn common_start_stops_at_a_word() {
        let finland = ["The capital of Finland is Helsinki", "The capital of Finland is Oslo"];
        assert_eq!(common_start(&finland), "The capital of Finland is");
        // "Helsinki" and "Helsingborg" share "Helsin", but not a word.
        let cities = ["Go to the city of Helsinki now", "Go to the city of Helsingborg now"];
        assert_eq!(common_start(&cities), "Go to the city of");
        assert_eq!(common_start(&["Go to Helsinki", "Go to Helsingborg"]), "");
        // Short starts are not worth a line; a text that is all of the start keeps its last word.
        assert_eq!(common_start(&["A cat", "A dog"]), "");
        let whole = ["The capital of Finland", "The capital of Finland is"];
        assert_eq!(common_start(&whole), "The capital of");
        assert_eq!(common_start(&["Ä capital öf X", "Ä capital öf Y"]), "Ä capital öf");
    }
}
