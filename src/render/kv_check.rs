//! `lmscope kv-check`: one row per greedy step, cached against full, and the cache's size.

use super::lens::{text_line, G_NOTE_80};
use super::shade::clip;
use super::{emit, group, right, table, uses_g, Format};
use crate::stages::kv_check::KvCheckReport;
use anyhow::Result;
use std::io::Write;

/// A logit difference in a few characters: `0` when exact.
fn diff(x: f32) -> String {
    if x == 0.0 {
        "0".to_string()
    } else {
        format!("{x:.1e}")
    }
}

pub fn kv_check(out: &mut dyn Write, format: Format, r: &KvCheckReport) -> Result<()> {
    emit(out, format, r, || {
        let mut s = String::from(
            "KV cache check: each greedy step's next token computed twice, with the cache\n(only the new position goes through the layers; the earlier keys and values are\nread from the cache) and by a full forward pass over the whole sequence, without\na cache\n",
        );
        let steps = format!(", {}", crate::text::count(r.steps.len(), "step"));
        s += &text_line(&r.input, r.prompt_ids.len(), &steps);
        let mut t =
            table(&["step", "seq", "token", "full", "|diff|", "ms cached", "ms full", "cache B"]);
        for st in &r.steps {
            let full = if st.agree { "same".to_string() } else { format!("id {}", st.id_full) };
            t.add_row(vec![
                st.step.to_string(),
                st.positions.to_string(),
                clip(&st.token, 10),
                full,
                diff(st.max_abs_diff),
                format!("{:.1}", st.ms_cached),
                format!("{:.1}", st.ms_full),
                group(st.cache_bytes),
            ]);
        }
        right(&mut t, &[0, 1, 4, 5, 6, 7]);
        s += &format!("{t}\n");
        s += "seq: tokens before the prediction; step 1 with the cache is the prompt's prefill\n";
        s += &if r.identical && r.max_abs_diff == 0.0 {
            "the cached and the full pass choose the same token at every step, from logits\nidentical to the last bit\n".to_string()
        } else if r.identical {
            format!(
                "the cached and the full pass choose the same token at every step; their logits\ndiffer by at most {} (float rounding: the kernels add in another order for\none position than for many)\n",
                diff(r.max_abs_diff)
            )
        } else {
            format!(
                "the cached and the full pass DISAGREE at step(s) {:?} (max |diff| {})\n",
                r.steps.iter().filter(|s| !s.agree).map(|s| s.step).collect::<Vec<_>>(),
                diff(r.max_abs_diff)
            )
        };
        s += &format!(
            "time: {:.1} ms with the cache, {:.1} ms in full passes\n",
            r.ms_cached_total, r.ms_full_total
        );
        let c = &r.cache;
        s += &format!(
            "cache after the last step: {} layers x 2 (K and V) x {} KV heads x {} positions\nx {} dims x {} bytes ({}) = {} bytes\n",
            c.layers,
            c.kv_heads,
            c.positions,
            c.head_dim,
            c.bytes_per_value,
            c.dtype,
            group(r.cache_bytes)
        );
        if c.heads != c.kv_heads {
            s += &format!(
                "without grouped-query attention ({} KV heads, one per query head) it would take\n{} bytes, {} times as much\n",
                c.heads,
                group(r.cache_bytes_without_gqa),
                c.heads / c.kv_heads.max(1)
            );
        }
        if uses_g(r.steps.iter().map(|s| &s.token)) {
            s += G_NOTE_80;
        }
        s
    })
}
