//! `lmscope neighbours` and `lmscope analogy`: ranked tokens by cosine.

use super::{emit, right, table, uses_g, Format, G_NOTE};
use crate::stages::space::{AnalogyReport, Neighbour, NeighboursReport};
use crate::text::{visible, visible_bytes};
use anyhow::Result;
use std::fmt::Write as _;
use std::io::Write;

fn ranked(s: &mut String, rows: &[Neighbour]) {
    let mut t = table(&["rank", "id", "token", "text", "cosine"]);
    for n in rows {
        t.add_row(vec![
            n.rank.to_string(),
            n.id.to_string(),
            n.token.clone(),
            visible_bytes(&n.bytes),
            format!("{:.4}", n.cosine),
        ]);
    }
    right(&mut t, &[0, 1, 4]);
    let _ = writeln!(s, "{t}");
}

fn tied_note(s: &mut String, space: &str, tied: bool) {
    if space == "output" && tied {
        s.push_str("lm_head.weight is tied to model.embed_tokens.weight in this model: the output space is the input space\n");
    }
}

pub fn neighbours(out: &mut dyn Write, format: Format, r: &NeighboursReport) -> Result<()> {
    emit(out, format, r, || {
        let w = visible(&r.lookup.looked_up);
        let mut s = format!(
            "nearest tokens to {w} by cosine similarity over all {} rows of {}\n",
            r.rows, r.matrix
        );
        tied_note(&mut s, r.space, r.tied);
        match r.id {
            Some(id) => {
                let _ = writeln!(s, "{w} itself (id {id}, cosine 1) is left out");
            }
            None => {
                let _ = writeln!(
                    s,
                    "{w} is the mean of {} tokens {:?} {:?}: it has no row of its own, so nothing is left out",
                    r.lookup.ids.len(),
                    r.lookup.tokens,
                    r.lookup.ids
                );
            }
        }
        ranked(&mut s, &r.neighbours);
        if uses_g(r.neighbours.iter().map(|n| &n.token)) {
            s += G_NOTE;
        }
        s
    })
}

pub fn analogy(out: &mut dyn Write, format: Format, r: &AnalogyReport) -> Result<()> {
    emit(out, format, r, || {
        let names: Vec<String> = r.inputs.iter().map(|i| visible(&i.lookup.looked_up)).collect();
        let mut s = format!(
            "{} - {} + {}: the nearest tokens by cosine over all {} rows of {}\n",
            names[0], names[1], names[2], r.rows, r.matrix
        );
        tied_note(&mut s, r.space, r.tied);
        s += "(3CosAdd: each word's row made unit length, as gensim's most_similar; the inputs are left out)\n";
        ranked(&mut s, &r.results);
        let mut t = table(&["input", "sign", "id", "rank", "cosine"]);
        for i in &r.inputs {
            t.add_row(vec![
                visible(&i.lookup.looked_up),
                if i.sign > 0 { "+".into() } else { "-".into() },
                i.id.map_or("mean".into(), |id| id.to_string()),
                i.rank.map_or("-".into(), |r| r.to_string()),
                i.cosine.map_or("-".into(), |c| format!("{c:.4}")),
            ]);
        }
        right(&mut t, &[2, 3, 4]);
        let _ = writeln!(s, "the inputs' own ranks among all {} rows:\n{t}", r.rows);
        if uses_g(r.results.iter().map(|n| &n.token)) {
            s += G_NOTE;
        }
        s
    })
}
