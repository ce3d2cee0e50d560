//! `lmscope lens`: the grid of each layer's top-1 guess at every position, and a per-layer table
//! of the top-k at one position.

use super::shade::{clip, pad, prob3, width, Shade};
use super::{emit, right, table, uses_g, Format};
use crate::stages::lens::{LensReport, LensRow};
use crate::text::visible;
use anyhow::Result;
use std::io::Write;

/// The width the hand-drawn grids fit in.
pub(crate) const WIDTH: usize = 80;

/// The note on GPT-2's `Ġ`, in lines that fit in [`WIDTH`] columns.
pub(crate) const G_NOTE_80: &str = "note: Ġ in a token stands for a space and Ċ for a newline (byte-level BPE maps\nbytes to printable characters)";

/// `text: "The capital of Finland is" (5 tokens)`, the text cut to fit in [`WIDTH`] columns, and
/// `extra` after the count.
pub(crate) fn text_line(input: &str, tokens: usize, extra: &str) -> String {
    let tail = format!(" ({}{extra})", crate::text::count(tokens, "token"));
    format!("text: {}{tail}\n", clip(&visible(input), WIDTH - 6 - width(&tail)))
}

/// "embed", "layer 0", ...
fn row_label(row: &LensRow) -> String {
    match row.layer {
        None => "embed".to_string(),
        Some(l) => format!("layer {l}"),
    }
}

pub fn lens(out: &mut dyn Write, format: Format, r: &LensReport, shade: Shade) -> Result<()> {
    emit(out, format, r, || {
        let mut s = String::from(
            "logit lens (raw, no trained translator): the model's final RMSNorm and lm_head\napplied to the residual stream after the embeddings and after each layer, as if\nthe model stopped there\n",
        );
        s += &text_line(&r.input, r.tokens.len(), "");
        if r.position.is_none() {
            s += "each cell: the top-1 next token after that position, shaded by its probability\n";
            s += &format!("{}\n\n", shade.legend());
            s += &grid(r, shade);
            s.push('\n');
        }
        s += &check_line(r);
        s.push('\n');
        s += &top_table(r);
        if let Some(t) = &r.track {
            s += &track_line(t);
        }
        let all_tokens = r.rows.iter().flat_map(|row| {
            row.positions.iter().flat_map(|c| c.top.iter().map(|g| g.token.as_str()))
        });
        if uses_g(all_tokens.chain(r.tokens.iter().map(String::as_str))) {
            s += G_NOTE_80;
        }
        s
    })
}

/// Rows (embeddings, layers) by positions, each cell the top-1 token shaded by its probability;
/// as many positions side by side as fit in [`WIDTH`] columns, further ones in blocks below.
pub(crate) fn grid(r: &LensReport, shade: Shade) -> String {
    const TOKEN: usize = 10; // token columns per cell (plus one for the shade)
    let label_w = r.rows.iter().map(|row| width(&row_label(row))).max().unwrap_or(5) + 1;
    let per_block = ((WIDTH - label_w + 1) / (TOKEN + 2)).max(1);
    let n = r.tokens.len();
    let mut s = String::new();
    for (b, start) in (0..n).step_by(per_block).enumerate() {
        if b > 0 {
            s.push('\n');
        }
        let end = (start + per_block).min(n);
        let mut line = " ".repeat(label_w);
        for p in start..end {
            line += &pad(&clip(&format!("{p} {}", r.tokens[p]), TOKEN + 1), TOKEN + 2);
        }
        s += line.trim_end();
        s.push('\n');
        for row in &r.rows {
            let mut line = pad(&row_label(row), label_w);
            for cell in &row.positions[start..end] {
                let g = &cell.top[0];
                line += &shade.cell(g.prob, &pad(&clip(&g.token, TOKEN), TOKEN));
                line.push(' ');
            }
            s += line.trim_end();
            s.push('\n');
        }
    }
    s
}

pub(crate) fn check_line(r: &LensReport) -> String {
    let c = &r.check;
    let same = if c.top1_equal { "the same top-1" } else { "a DIFFERENT top-1" };
    let positions = if r.position.is_some() { "at this position" } else { "at every position" };
    format!(
        "the last row is the model's own prediction; against its logits (an ordinary\nforward pass): {same} {positions}, max |difference| {}\n",
        if c.max_abs_diff == 0.0 { "0".to_string() } else { format!("{:.1e}", c.max_abs_diff) }
    )
}

/// The per-layer top-k at `--position` (default the last), with the tracked token's rank.
fn top_table(r: &LensReport) -> String {
    let p = r.rows[0].positions.len() - 1; // the last shown; the only one with --position
    let position = r.rows[0].positions[p].position;
    let mut s = format!(
        "position {position} ({}): the top {} of each layer\n",
        r.tokens[position], r.top_k
    );
    if let Some(t) = &r.track {
        s +=
            &format!("rank and prob: where {} (id {}) is in that layer's guesses\n", t.token, t.id);
    }
    // As many ranks side by side as fit in the terminal; the rest in tables below, each with
    // the layer column (and the tracked word's columns in the last).
    let fits = |t: &str| t.lines().all(|line| width(line) <= WIDTH);
    let mut per = r.top_k.max(1);
    let tables = loop {
        let ranks: Vec<usize> = (1..=r.top_k).collect();
        let chunks: Vec<&[usize]> = ranks.chunks(per).collect();
        let last = chunks.len() - 1;
        let tables: Vec<String> =
            chunks.iter().enumerate().map(|(i, c)| ranks_table(r, p, c, i == last)).collect();
        if per == 1 || tables.iter().all(|t| fits(t)) {
            break tables;
        }
        per -= 1;
    };
    s + &tables.join("")
}

/// The per-layer table of the given ranks (1-based) at shown position `p`, with the tracked
/// word's rank and probability when `track` is set.
fn ranks_table(r: &LensReport, p: usize, ranks: &[usize], track: bool) -> String {
    let track = if track { r.track.as_ref() } else { None };
    let mut header: Vec<String> = vec!["layer".into()];
    header.extend(ranks.iter().map(|k| k.to_string()));
    if track.is_some() {
        header.extend(["rank".to_string(), "prob".to_string()]);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = table(&header);
    for (i, row) in r.rows.iter().enumerate() {
        let mut cells = vec![match row.layer {
            None => "embed".to_string(),
            Some(l) => l.to_string(),
        }];
        let top = &row.positions[p].top;
        cells.extend(
            ranks
                .iter()
                .filter_map(|&k| top.get(k - 1))
                .map(|g| format!("{} {}", clip(&g.token, 10), prob3(g.prob))),
        );
        if let Some(track) = track {
            let tr = &track.rows[i];
            cells.push(tr.rank.to_string());
            cells.push(format!("{:.3}", tr.prob));
        }
        t.add_row(cells);
    }
    right(&mut t, &[0]);
    if track.is_some() {
        right(&mut t, &[ranks.len() + 1, ranks.len() + 2]);
    }
    format!("{t}\n")
}

fn track_line(t: &crate::stages::lens::Track) -> String {
    let name = |layer: Option<usize>| match layer {
        None => "the embeddings".to_string(),
        Some(l) => format!("layer {l}"),
    };
    // The first row from which the token stays in the top 10 (resp. top 1) to the end.
    let from = |k: usize| {
        let last_out = t.rows.iter().rposition(|row| row.rank > k);
        match last_out {
            None => Some(name(t.rows[0].layer)),
            Some(i) if i + 1 < t.rows.len() => Some(name(t.rows[i + 1].layer)),
            Some(_) => None,
        }
    };
    let last = t.rows.last().map_or(0, |row| row.rank);
    let mut s = format!(
        "{} ({}, id {}) after position {}: rank {last} at the last layer",
        visible(&t.looked_up),
        t.token,
        t.id,
        t.position
    );
    let mut when = Vec::new();
    match from(10) {
        Some(l) => when.push(format!("in the top 10 from {l} on")),
        None => when.push("not in the top 10 at the last layer".to_string()),
    }
    if let Some(l) = from(1) {
        when.push(format!("the top guess from {l} on"));
    }
    s += &format!("\n{}", when.join(", "));
    s + "\n"
}
