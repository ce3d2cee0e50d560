//! `lmscope trace`: every stage of one prompt, condensed to fit 80 columns.

use super::lens::{check_line, grid, text_line, G_NOTE_80};
use super::shade::{clip, Shade};
use super::{emit, right, table, uses_g, Format};
use crate::stages::trace::TraceReport;
use crate::text::{number, visible, visible_bytes};
use anyhow::Result;
use std::fmt::Write as _;
use std::io::Write;

/// The eight heights of a sparkline.
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One character per value, scaled from the smallest (▁) to the largest (█).
pub fn sparkline(values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    values
        .iter()
        .map(|&v| {
            let k = if hi > lo { ((v - lo) / (hi - lo) * 7.0).round() as usize } else { 0 };
            SPARKS[k.min(7)]
        })
        .collect()
}

/// A head's class as one letter, for the attention overview.
fn class_letter(class: &str) -> char {
    match class {
        "previous" => 'P',
        "first" => 'F',
        "self" => 'S',
        "broad" => 'B',
        "other" => 'o',
        _ => '-',
    }
}

pub fn trace(out: &mut dyn Write, format: Format, r: &TraceReport, shade: Shade) -> Result<()> {
    emit(out, format, r, || human(r, shade))
}

fn human(r: &TraceReport, shade: Shade) -> String {
    let mut s = String::new();
    let tok = &r.tokenize.report;
    let bos = if r.tokenize.bos_added { ", BOS added" } else { ", no BOS added" };
    let head = format!("lmscope {} trace: one prompt through {}", r.version, r.model);
    let _ = writeln!(s, "{}", clip(&head, 80));
    s += &text_line(&r.input, tok.ids.len(), bos);

    // 1-2. tokens and their embedding rows.
    let _ = writeln!(
        s,
        "\n1-2. tokens, and their rows of the embedding matrix [{}, {}]",
        r.embed.shape[0], r.embed.shape[1]
    );
    let mut t = table(&["pos", "id", "token", "text", "bytes", "norm"]);
    for (p, (tk, e)) in tok.tokens.iter().zip(&r.embed.tokens).enumerate() {
        let bytes = match (tk.start, tk.end) {
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => "-".to_string(),
        };
        t.add_row(vec![
            p.to_string(),
            tk.id.to_string(),
            clip(&tk.token, 16),
            clip(&visible_bytes(&tk.bytes), 18),
            bytes,
            format!("{:.3}", e.norm),
        ]);
    }
    right(&mut t, &[0, 1, 5]);
    let _ = writeln!(s, "{t}");

    // 3. the residual stream.
    let norms: Vec<f64> = r.residual.layers.iter().map(|l| l.norm_last).collect();
    let _ = writeln!(
        s,
        "\n3. residual stream: its length at the last position, embed then layers 0..{}",
        norms.len().saturating_sub(2)
    );
    for chunk in norms.chunks(60) {
        let _ = writeln!(s, "   {}", sparkline_scaled(chunk, &norms));
    }
    if let (Some(first), Some(last)) = (norms.first(), norms.last()) {
        let max = norms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(s, "   embed {first:.2} -> last layer {last:.2} (largest {max:.2})");
    }

    // 4. the logit lens.
    let _ = writeln!(s, "\n4. logit lens: each layer's top-1 guess at each position");
    let _ = writeln!(s, "{}", shade.legend());
    s += &grid(&r.lens, shade);
    s += &check_line(&r.lens);
    if let Some(tr) = &r.lens.track {
        let probs: Vec<f64> = tr.rows.iter().map(|x| x.prob).collect();
        let _ = writeln!(
            s,
            "p(final answer {}) by layer: {} {:.3} -> {:.3}",
            clip(&visible(r.logits.top.first().map_or("", |x| x.text.as_str())), 14),
            clip(&sparkline(&probs), 36),
            probs.first().copied().unwrap_or(0.0),
            probs.last().copied().unwrap_or(0.0)
        );
    }

    // 5. attention.
    let a = &r.attention;
    let _ = writeln!(
        s,
        "\n5. attention: {} heads per layer ({} KV heads), each head's dominant pattern",
        a.report.num_heads, a.report.num_kv_heads
    );
    let _ = writeln!(s, "   P previous token, F first token, S self, B broad, o other, - none");
    if let Some(summary) = &a.report.summary {
        for c in &a.class_counts {
            let letters: String = summary
                .iter()
                .filter(|h| h.layer == c.layer)
                .map(|h| class_letter(h.scores.class))
                .collect();
            let _ = writeln!(
                s,
                "   layer {:>2}  {}  P{} F{} S{} B{} o{}",
                c.layer,
                clip(&letters, 40),
                c.previous,
                c.first,
                c.self_,
                c.broad,
                c.other
            );
        }
    }
    let heads = |v: &[crate::stages::trace::HeadRank]| {
        v.iter()
            .map(|h| format!("{}.{} {:.2}", h.layer, h.head, h.score))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ =
        writeln!(s, "   previous-token heads (layer.head score): {}", heads(&a.strongest_previous));
    let source = match a.report.induction_input.as_ref().map(|i| i.source) {
        Some("text") => "on the text",
        _ => "repeated random tokens",
    };
    let _ = writeln!(s, "   induction heads ({source}): {}", heads(&a.strongest_induction));

    // 6. the final logits.
    let l = &r.logits;
    let _ = writeln!(
        s,
        "\n6. logits: shape [{}, {}, {}]; the top {} after position {} ({})",
        l.shape[0],
        l.shape[1],
        l.shape[2],
        l.top.len(),
        l.position,
        clip(&l.position_token, 16)
    );
    let mut t = table(&["rank", "id", "token", "text", "logit", "prob"]);
    for x in &l.top {
        t.add_row(vec![
            x.rank.to_string(),
            x.id.to_string(),
            clip(&x.token, 16),
            clip(&visible_bytes(&x.bytes), 18),
            format!("{:.3}", x.logit),
            format!("{:.4}", x.prob),
        ]);
    }
    right(&mut t, &[0, 1, 4, 5]);
    let _ = writeln!(s, "{t}");

    // 7. the next token.
    let n = &r.next;
    match &r.sample {
        None => {
            let _ = writeln!(
                s,
                "\n7. next token (greedy, the argmax): {} (id {}, prob {:.4})",
                visible(&n.text),
                n.id,
                n.prob
            );
        }
        Some(sr) => {
            let opt = |v: Option<f64>| v.map_or("off".to_string(), number);
            let _ = writeln!(
                s,
                "\n7. next token, sampled: temperature {}, top-k {}, top-p {}, seed {}",
                number(sr.temperature),
                opt(sr.top_k.map(|k| k as f64)),
                opt(sr.top_p),
                sr.seed
            );
            if let Some(st) = sr.steps.first() {
                for x in &st.stages {
                    let _ = writeln!(
                        s,
                        "   {:<11} {:>8}: {:>6} token{} kept, mass kept {:.4}, cut {:.4}",
                        x.stage,
                        opt(x.setting),
                        x.kept,
                        if x.kept == 1 { "" } else { "s" },
                        x.mass,
                        x.cut
                    );
                }
                let _ = writeln!(
                    s,
                    "   drew u = {:.4} in [{:.4}, {:.4}): {} (id {}, rank {}, prob {:.4})",
                    st.u,
                    st.interval[0],
                    st.interval[1],
                    visible(&n.text),
                    n.id,
                    n.rank,
                    n.prob
                );
            }
        }
    }

    // 8. generated tokens.
    if let Some(gen) = &r.generate {
        let _ = writeln!(
            s,
            "\n8. {} generated ({}): prob at T=1, surprisal in bits",
            crate::text::count(gen.report.steps.len(), "token"),
            if r.sample.is_some() { "sampled as in 7" } else { "greedy" }
        );
        let mut t = table(&["step", "id", "text", "prob", "bits"]);
        for (i, (st, bits)) in gen.report.steps.iter().zip(&gen.surprisal_bits).enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                st.id.to_string(),
                clip(&visible_bytes(&st.bytes), 24),
                format!("{:.4}", st.prob),
                format!("{bits:.2}"),
            ]);
        }
        right(&mut t, &[0, 1, 3, 4]);
        let _ = writeln!(s, "{t}");
        let _ = writeln!(s, "text: {}", clip(&visible(&gen.report.text), 74));
    }

    let all_tokens = tok
        .tokens
        .iter()
        .map(|t| t.token.as_str())
        .chain(
            r.lens
                .rows
                .iter()
                .flat_map(|row| row.positions.iter().map(|c| c.top[0].token.as_str())),
        )
        .chain(l.top.iter().map(|x| x.token.as_str()));
    if uses_g(all_tokens) {
        s += G_NOTE_80;
    }
    s
}

/// [`sparkline`] of `chunk`, scaled to the range of all `values`.
fn sparkline_scaled(chunk: &[f64], values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut with_range = vec![lo, hi];
    with_range.extend_from_slice(chunk);
    sparkline(&with_range).chars().skip(2).collect()
}

#[cfg(test)]
mod tests {
    use super::sparkline;

    #[test]
    fn sparkline_spans_the_range() {
        assert_eq!(sparkline(&[0.0, 1.0, 0.5]), "▁█▅");
        assert_eq!(sparkline(&[2.0, 2.0]), "▁▁");
    }
}
