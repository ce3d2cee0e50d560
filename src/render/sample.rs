//! `lmscope sample`: per step, what each filter kept and cut, the candidates through every
//! stage, and where the uniform draw fell.

use super::score::short;
use super::{emit, right, table, Format};
use crate::stages::sample::{SampleReport, SampleStep};
use crate::text::{number, visible_bytes};
use anyhow::Result;
use std::fmt::Write as _;
use std::io::Write;

/// 0.7 -> "0.7", 40.0 -> "40", None -> "off".
fn setting(v: Option<f64>) -> String {
    v.map_or("off".into(), number)
}

/// A probability in a narrow column: 4 decimals, "-" for a removed token.
fn p4(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4}"))
}

fn step(s: &mut String, r: &SampleReport, st: &SampleStep) {
    let _ =
        writeln!(s, "step {}: the next token after {}", st.step, visible_bytes(&context(r, st)));
    let mut t = table(&["stage", "setting", "kept", "mass kept", "mass cut"]);
    for x in &st.stages {
        t.add_row(vec![
            x.stage.to_string(),
            setting(x.setting),
            x.kept.to_string(),
            format!("{:.4}", x.mass),
            format!("{:.4}", x.cut),
        ]);
    }
    right(&mut t, &[1, 2, 3, 4]);
    let _ = writeln!(s, "{t}");

    let t_head = format!("T={}", number(r.temperature));
    let mut t = table(&["rank", "token", "logit", "T=1", &t_head, "top-k", "top-p", "cum"]);
    let mut last = 0;
    for c in &st.candidates {
        if c.rank > last + 1 {
            t.add_row(vec!["…".to_string()]);
        }
        last = c.rank;
        let rank = if c.drawn { format!("*{}", c.rank) } else { c.rank.to_string() };
        t.add_row(vec![
            rank,
            short(&c.bytes, 12),
            format!("{:.3}", c.logit),
            format!("{:.4}", c.prob),
            format!("{:.4}", c.prob_temperature),
            p4(c.prob_top_k),
            p4(c.prob_final),
            format!("{:.4}", c.cumulative),
        ]);
    }
    right(&mut t, &[0, 2, 3, 4, 5, 6, 7]);
    let _ = writeln!(s, "{t}");

    let _ = writeln!(
        s,
        "draw: u = {:.4} fell in [{:.4}, {:.4}), the interval of {} (id {}, * above)",
        st.u,
        st.interval[0],
        st.interval[1],
        visible_bytes(&st.bytes),
        st.id
    );
    if st.rank != 1 {
        let best = &st.candidates[0];
        let drawn = st.candidates.iter().find(|c| c.drawn);
        let _ = writeln!(
            s,
            "the drawn token is rank {}, not the most likely {}: sampling gives every kept token its share of [0, 1), and u fell in this one's {:.4}",
            st.rank,
            visible_bytes(&best.bytes),
            drawn.and_then(|c| c.prob_final).unwrap_or(st.interval[1] - st.interval[0])
        );
    }
}

/// The bytes before a step: the prompt (a long one shortened) and the tokens drawn so far.
fn context(r: &SampleReport, st: &SampleStep) -> Vec<u8> {
    let mut text = r.prompt_shown.as_bytes().to_vec();
    for earlier in &r.steps[..st.step - 1] {
        text.extend_from_slice(&earlier.bytes);
    }
    text
}

pub const SAMPLE_NOTES: &str = "T=1, T=..: the model's probabilities and after temperature; top-k, top-p: after each filter, renormalised (- = removed); cum: running total of the top-k column, which top-p compares with p; the kept tokens lie end to end in id order from 0 to 1, and the token whose interval holds u is drawn";

pub fn sample(out: &mut dyn Write, format: Format, r: &SampleReport) -> Result<()> {
    emit(out, format, r, || {
        let mut s = format!(
            "sampling with temperature {}, top-k {}, top-p {}, seed {} (transformers' order: temperature, top-k, top-p, renormalise, draw)\n",
            number(r.temperature),
            r.top_k.map_or("off".into(), |k| k.to_string()),
            setting(r.top_p),
            r.seed
        );
        for st in &r.steps {
            step(&mut s, r, st);
            s.push('\n');
        }
        if r.stopped == "eos" {
            s += "stopped: an end-of-sequence token was drawn (--ignore-eos goes on)\n";
        }
        if r.prompt_shown == r.prompt {
            let _ = writeln!(s, "text: {}", r.text);
        } else {
            // A long prompt, shortened as in each step's line; the drawn tokens after it.
            let drawn: Vec<u8> = r.steps.iter().flat_map(|st| st.bytes.iter().copied()).collect();
            let _ = writeln!(s, "text: {}{}", r.prompt_shown, String::from_utf8_lossy(&drawn));
        }
        s += &crate::text::wrap(SAMPLE_NOTES, super::score::NOTE_WIDTH);
        s
    })
}
