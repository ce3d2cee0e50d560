//! `lmscope attention`: query-by-key heatmaps of a layer's heads, their scores, the summary grid
//! of every head, and the induction ranking.

use super::lens::WIDTH;
use super::lens::{text_line, G_NOTE_80};
use super::shade::{clip, pad, prob3, width, Shade};
use super::{emit, right, table, uses_g, Format};
use crate::stages::attention::{AttentionReport, HeadAttention, Scores};
use anyhow::Result;
use std::io::Write;

/// How many heads the induction table lists (the JSON has all).
const INDUCTION_ROWS: usize = 10;

pub fn attention(
    out: &mut dyn Write,
    format: Format,
    r: &AttentionReport,
    shade: Shade,
) -> Result<()> {
    emit(out, format, r, || {
        let t = r.tokens.len();
        let group = r.num_heads / r.num_kv_heads.max(1);
        let mut s = text_line(&r.input, t, "");
        s += &format!(
            "{} query heads per layer on {} KV heads: query head h reads the keys and values\nof KV head h / {group}\n",
            r.num_heads, r.num_kv_heads
        );
        if let (Some(layer), Some(heads)) = (r.layer, &r.heads) {
            s += &format!(
                "\nlayer {layer}: softmax(q k^T / sqrt(d) + causal mask) per head; row = query position,\ncolumn = key position, blank above the diagonal (a token cannot see later ones),\nrows sum to 1\n"
            );
            s += &format!("{}\n", shade.legend());
            for h in heads {
                s.push('\n');
                s += &heatmap(r, h, shade);
            }
            s.push('\n');
            s += &scores_table(heads, t);
        }
        if let Some(summary) = &r.summary {
            s.push('\n');
            s += &summary_grid(r, summary, shade);
        }
        if let (Some(input), Some(ranked)) = (&r.induction_input, &r.induction) {
            s.push('\n');
            match input.source {
                "random" => {
                    s += &format!(
                        "induction test on a random sequence: the text repeats no token, so {} random\ntokens (seed {}) followed by the same {} again\n",
                        input.ids.len() / 2,
                        input.seed.unwrap_or_default(),
                        input.ids.len() / 2
                    );
                }
                _ => s += "induction test on the text (it repeats tokens)\n",
            }
            s += &format!(
                "score: the mean attention from a token to the token that followed its previous\noccurrence (over {} queries); an induction head predicts that it follows again\n",
                input.queries
            );
            let mut tab = table(&["rank", "layer", "head", "KV head", "score"]);
            for (i, x) in ranked.iter().take(INDUCTION_ROWS).enumerate() {
                tab.add_row(vec![
                    (i + 1).to_string(),
                    x.layer.to_string(),
                    x.head.to_string(),
                    x.kv_head.to_string(),
                    format!("{:.4}", x.score),
                ]);
            }
            right(&mut tab, &[0, 1, 2, 3, 4]);
            s += &format!("{tab}\n");
            if ranked.len() > INDUCTION_ROWS {
                s += &format!(
                    "the top {INDUCTION_ROWS} of {} heads (--json lists all)\n",
                    ranked.len()
                );
            }
        }
        if r.heads.is_some() && uses_g(r.tokens.iter()) {
            s += G_NOTE_80;
        }
        s
    })
}

/// One head's probabilities as a query-by-key grid: numbers in shaded cells when the keys fit in
/// [`WIDTH`] columns, else shades alone, two columns a key; beyond that the first positions only.
fn heatmap(r: &AttentionReport, h: &HeadAttention, shade: Shade) -> String {
    let t = h.probs.len();
    let digits = t.saturating_sub(1).to_string().len();
    let labels: Vec<String> =
        (0..t).map(|i| format!("{i:>digits$} {}", clip(&r.tokens[i], 10))).collect();
    let label_w = labels.iter().map(|l| width(l)).max().unwrap_or(0) + 3;
    let numeric = label_w + 5 * t - 1 <= WIDTH;
    let fit = (WIDTH - label_w) / 2;
    let shown = if numeric { t } else { t.min(fit) };
    let mut s = format!("head {} (KV head {}): {}\n", h.head, h.kv_head, class_name(&h.scores));
    if shown < t {
        s += &format!(
            "(positions 0..{} of {t}: the rest does not fit in {WIDTH} columns; --json has all)\n",
            shown - 1
        );
    }
    let mut header = " ".repeat(label_w);
    for j in 0..shown {
        header += &if numeric { format!("{j:>4} ") } else { format!("{:<2}", j % 10) };
    }
    s += header.trim_end();
    s.push('\n');
    for (i, row) in h.probs.iter().enumerate().take(shown) {
        let mut line = pad(&format!("  {}", labels[i]), label_w);
        for (j, &p) in row.iter().enumerate().take(shown) {
            let p = p as f64;
            line += &match (numeric, j <= i) {
                (true, true) => shade.cell(p, &prob3(p)) + " ",
                (true, false) => "     ".to_string(),
                (false, true) => shade.block(p, 2),
                (false, false) => "  ".to_string(),
            };
        }
        s += line.trim_end();
        s.push('\n');
    }
    s
}

fn class_name(s: &Scores) -> &'static str {
    match s.class {
        "previous" => "previous-token head",
        "first" => "first-token head (attention sink)",
        "self" => "self head",
        "broad" => "broad (attention spread out)",
        "other" => "no single pattern",
        _ => "too few tokens to classify",
    }
}

fn f2(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.2}"))
}

fn scores_table(heads: &[HeadAttention], t: usize) -> String {
    let mut s = if t >= 3 {
        format!(
            "scores, each the mean over queries 2..{} (docs/json.md): previous = attention to\nthe previous token, first = to the first token, self = to itself; entropy in\nnats and as a fraction of its largest possible value (0 = one key, 1 = even)\n",
            t - 1
        )
    } else {
        "scores need at least 3 tokens (they average over queries 2..t-1)\n".to_string()
    };
    let mut tab =
        table(&["head", "KV head", "previous", "first", "self", "entropy", "fraction", "class"]);
    for h in heads {
        let c = &h.scores;
        tab.add_row(vec![
            h.head.to_string(),
            h.kv_head.to_string(),
            f2(c.previous),
            f2(c.first),
            f2(c.self_),
            f2(c.entropy),
            f2(c.entropy_normalized),
            c.class.to_string(),
        ]);
    }
    right(&mut tab, &[0, 1, 2, 3, 4, 5, 6]);
    s += &format!("{tab}\n");
    s
}

/// The letter and number of a head in the summary: the class and the score behind it.
fn summary_cell(c: &Scores) -> (String, f64) {
    let v = |x: Option<f64>| x.unwrap_or(0.0);
    match c.class {
        "previous" => ("P".into(), v(c.previous)),
        "first" => ("F".into(), v(c.first)),
        "self" => ("S".into(), v(c.self_)),
        "broad" => ("B".into(), v(c.entropy_normalized)),
        "other" => {
            let best = v(c.previous).max(v(c.first)).max(v(c.self_));
            ("·".into(), best)
        }
        _ => ("-".into(), 0.0),
    }
}

fn summary_grid(
    r: &AttentionReport,
    summary: &[crate::stages::attention::HeadSummary],
    shade: Shade,
) -> String {
    let t = r.tokens.len();
    let mut s = String::from("every head of every layer, by its strongest pattern");
    if t >= 3 {
        s += &format!(" (mean over queries 2..{})\n", t - 1);
    } else {
        s += "\n(needs at least 3 tokens: every head is -)\n";
    }
    s += "P = previous token, F = first token (sink), S = self: the number is that score;\nB = broad: normalized entropy; · = other: its largest of the three\n";
    s += &format!("{}\n\n", shade.legend());
    let layers = summary.iter().map(|x| x.layer + 1).max().unwrap_or(0);
    let label_w = format!("layer {}", layers.saturating_sub(1)).len() + 1;
    let per_block = ((WIDTH - label_w + 1) / 6).max(1);
    let heads = r.num_heads;
    for start in (0..heads).step_by(per_block) {
        let end = (start + per_block).min(heads);
        let mut line = pad("head", label_w);
        for h in start..end {
            line += &format!(" {h:<5}");
        }
        s += line.trim_end();
        s.push('\n');
        for l in 0..layers {
            let mut line = pad(&format!("layer {l}"), label_w);
            for x in summary.iter().filter(|x| x.layer == l && (start..end).contains(&x.head)) {
                let (letter, value) = summary_cell(&x.scores);
                let text = if letter == "-" {
                    "-   ".to_string()
                } else {
                    format!("{letter}{}", prob3(value))
                };
                line += &shade.cell(value, &text);
                line.push(' ');
            }
            s += line.trim_end();
            s.push('\n');
        }
        s.push('\n');
    }
    let count = |class: &str| summary.iter().filter(|x| x.scores.class == class).count();
    s += &format!(
        "{} heads: {} previous, {} first, {} self, {} broad, {} other\n",
        summary.len(),
        count("previous"),
        count("first"),
        count("self"),
        count("broad"),
        count("other")
    );
    s
}
