//! The one place that writes to stdout: tables (comfy-table) for people, JSON for programs.

use crate::stages::logits::LogitsReport;
use crate::stages::tokenize::TokenizeReport;
use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, ContentArrangement, Table};
use serde::Serialize;
use std::io::Write;

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Prints any report: JSON as one document, otherwise the given human rendering.
fn emit<T: Serialize>(format: Format, report: &T, human: impl FnOnce() -> String) -> Result<()> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(report)?,
        Format::Human => human(),
    };
    let mut out = std::io::stdout().lock();
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

/// A piece of text with spaces, newlines and control characters visible: `" Helsinki"`, `"\n"`.
pub fn visible(text: &str) -> String {
    format!("{text:?}")
}

/// One line explaining GPT-2's `Ġ` convention, shown when a token uses it.
const G_NOTE: &str =
    "note: Ġ in a token stands for a space (byte-level BPE maps bytes to printable characters; Ċ is a newline)";

fn uses_g(tokens: impl IntoIterator<Item = impl AsRef<str>>) -> bool {
    tokens.into_iter().any(|t| t.as_ref().contains(['Ġ', 'Ċ']))
}

pub fn tokenize(format: Format, r: &TokenizeReport) -> Result<()> {
    emit(format, r, || {
        let mut t = table(&["#", "id", "token", "text", "bytes"]);
        for (i, tok) in r.tokens.iter().enumerate() {
            let token = if tok.special {
                format!("{} (special)", tok.token)
            } else {
                tok.token.clone()
            };
            let span = if r.input.is_some() {
                format!("{}..{}", tok.start, tok.end)
            } else {
                "-".into()
            };
            t.add_row(vec![
                i.to_string(),
                tok.id.to_string(),
                token,
                visible(&tok.text),
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
            Some(false) => s += "  (differs from the input)\n",
            None => s += "\n",
        }
        if uses_g(r.tokens.iter().map(|t| &t.token)) {
            s += G_NOTE;
        }
        s
    })
}

pub fn logits(format: Format, r: &LogitsReport) -> Result<()> {
    emit(format, r, || {
        let mut s = format!(
            "logits shape: [{}, {}, {}]  (batch, tokens, vocabulary)\n",
            r.shape[0], r.shape[1], r.shape[2]
        );
        for row in &r.rows {
            let f = |v: &[f32]| {
                v.iter()
                    .map(|x| format!("{x:9.4}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            s += &format!("  [{}, ..., {}]\n", f(&row.first), f(&row.last));
        }
        s += &format!(
            "next-token ranking after position {} ({}):\n",
            r.position,
            visible(&r.position_token)
        );
        let mut t = table(&["rank", "id", "token", "text", "logit", "prob", "log-prob"]);
        for x in &r.top {
            t.add_row(vec![
                x.rank.to_string(),
                x.id.to_string(),
                x.token.clone(),
                visible(&x.text),
                format!("{:.4}", x.logit),
                format!("{:.4}", x.prob),
                format!("{:.4}", x.logprob),
            ]);
        }
        right(&mut t, &[0, 1, 4, 5, 6]);
        s += &format!("{t}\n");
        if uses_g(r.top.iter().map(|t| &t.token)) {
            s += G_NOTE;
        }
        s
    })
}
