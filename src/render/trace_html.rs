//! `lmscope trace --html FILE`: one self-contained page (inline CSS, one small inline script, SVG
//! drawn by it; no network requests). The report's JSON is embedded in the page and the script
//! draws every picture from it, so the page shows exactly what `--json` prints.

use crate::stages::trace::TraceReport;
use anyhow::Result;

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// JSON that can sit inside a `<script>` element: `<` (and so `</script>` and `<!--`) becomes
/// `\u003c`, `>` and `&` likewise; the line separators U+2028/U+2029 are escaped as well. The
/// result parses to the same value.
pub fn script_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1150px;padding:16px 24px;color:#1b1b1b;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
.meta{color:#444;font-size:.9em}.meta code{background:#f3f3f3;padding:1px 4px;word-break:break-all}
.tokens{display:flex;flex-wrap:wrap;gap:6px}
.tok{border:2px solid #555;border-radius:6px;padding:4px 8px;text-align:center;min-width:2.5em}
.tok .t{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;font-size:1.05em}
.tok .i{font-size:.75em;color:#333}
table.heat{border-collapse:collapse;font-size:.78em}
table.heat td,table.heat th{border:1px solid #ddd;padding:2px 4px;white-space:pre;font-family:ui-monospace,Menlo,Consolas,monospace}
table.heat th{background:#f6f6f6;font-weight:600}
table.plain{border-collapse:collapse;font-size:.85em}table.plain td,table.plain th{border:1px solid #ddd;padding:2px 8px}
.note{color:#555;font-size:.85em}
.multiples{display:flex;flex-wrap:wrap;gap:10px}
.multiples figure{margin:0;text-align:center;font-size:.75em;cursor:pointer}
.multiples figure.on{outline:3px solid #c33}
.bar text{font-size:12px}
label{margin-right:1em}
"#;

const SCRIPT: &str = r##"
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("trace-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) { if (k === "text") { e.textContent = attrs[k]; } else { e.setAttribute(k, attrs[k]); } }
    (kids || []).forEach(function (c) { e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function sv(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs || {}) { e.setAttribute(k, attrs[k]); }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function vis(s) { return JSON.stringify(s); }
  function f(x, d) { return (x === null || x === undefined) ? "-" : Number(x).toFixed(d); }
  // Probability -> background: white to deep blue; dark cells get white text.
  function heat(p) { var l = 100 - 62 * Math.max(0, Math.min(1, p)); return "hsl(215,75%," + l.toFixed(1) + "%)"; }
  function ink(p) { return p > 0.55 ? "#fff" : "#111"; }
  var main = document.getElementById("sections");
  function section(id, title, note) {
    var s = el("section", { id: id }, [el("h2", { text: title })]);
    if (note) { s.appendChild(el("p", { "class": "note", text: note })); }
    main.appendChild(s);
    return s;
  }
  var tok = data.tokenize;

  // 1. Tokens.
  var s1 = section("tokens", "1. Tokens", tok.count + " tokens" + (data.tokenize.bos_added ? ", a BOS token added in front" : ", no BOS token added") + "; each box shows the token's text (quoted, whitespace visible), its id and its vocabulary string.");
  var row = el("div", { "class": "tokens" });
  tok.tokens.forEach(function (t, i) {
    var hue = (i * 67) % 360;
    row.appendChild(el("div", { "class": "tok", style: "background:hsl(" + hue + ",70%,88%);border-color:hsl(" + hue + ",50%,40%)", title: "position " + i + ", id " + t.id + ", bytes " + (t.start === undefined ? "-" : t.start + ".." + t.end) }, [
      el("div", { "class": "t", text: vis(t.text) }),
      el("div", { "class": "i", text: "#" + i + " id " + t.id }),
      el("div", { "class": "i mono", text: t.token })
    ]));
  });
  s1.appendChild(row);

  // 2-3. Embeddings and the residual stream.
  var s2 = section("residual", "2. Embeddings and the residual stream", "The embedding matrix is [" + data.embed.shape.join(", ") + "]; each token's row has the length listed. The line: the length of the last position's residual vector after the embeddings and after each layer.");
  var et = el("table", { "class": "plain" }, [el("tr", {}, [el("th", { text: "token" })].concat(data.embed.tokens.map(function (t) { return el("td", { "class": "mono", text: t.token }); }))),
    el("tr", {}, [el("th", { text: "embedding norm" })].concat(data.embed.tokens.map(function (t) { return el("td", { text: f(t.norm, 3) }); })))]);
  s2.appendChild(et);
  var layers = data.residual.layers;
  s2.appendChild(lineChart(layers.map(function (l) { return l.norm_last; }), layers.map(function (l) { return l.layer === null ? "emb" : String(l.layer); }), "residual length", false));

  function lineChart(ys, labels, name, unit) {
    var W = 760, H = 220, L = 60, B = 40, T = 14;
    var max = Math.max.apply(null, ys.concat([unit ? 1 : 1e-12]));
    var g = sv("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": name });
    var x = function (i) { return L + (W - L - 20) * (ys.length > 1 ? i / (ys.length - 1) : 0.5); };
    var y = function (v) { return T + (H - T - B) * (1 - v / max); };
    g.appendChild(sv("line", { x1: L, y1: y(0), x2: W - 20, y2: y(0), stroke: "#888" }));
    g.appendChild(sv("line", { x1: L, y1: T, x2: L, y2: y(0), stroke: "#888" }));
    [0, 0.5, 1].forEach(function (q) {
      g.appendChild(sv("text", { x: L - 6, y: y(max * q) + 4, "text-anchor": "end", "font-size": 11 }, (max * q).toFixed(unit ? 2 : 1)));
    });
    var pts = ys.map(function (v, i) { return x(i).toFixed(1) + "," + y(v).toFixed(1); }).join(" ");
    g.appendChild(sv("polyline", { points: pts, fill: "none", stroke: "#1f5fbf", "stroke-width": 2 }));
    ys.forEach(function (v, i) {
      var c = sv("circle", { cx: x(i), cy: y(v), r: 3, fill: "#1f5fbf" });
      c.appendChild(sv("title", {}, labels[i] + ": " + v.toFixed(unit ? 4 : 2)));
      g.appendChild(c);
      if (ys.length <= 16 || i % 3 === 0 || i === ys.length - 1) {
        g.appendChild(sv("text", { x: x(i), y: H - B + 16, "text-anchor": "middle", "font-size": 10 }, labels[i]));
      }
    });
    g.appendChild(sv("text", { x: (L + W) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11 }, "layer (emb = the embeddings)"));
    g.appendChild(sv("text", { x: 12, y: T + (H - T - B) / 2, "font-size": 11, transform: "rotate(-90 12 " + (T + (H - T - B) / 2) + ")", "text-anchor": "middle" }, name));
    return g;
  }

  // 4. The logit lens.
  var lens = data.lens;
  var s4 = section("lens", "3. Logit lens", "Each cell: the top-1 next token if the model stopped after that layer (its final norm and lm_head applied to the residual stream), shaded by its probability (darker = more likely; the number is the probability in %). Hover a cell for its top " + lens.top_k + ".");
  var lt = el("table", { "class": "heat" });
  lt.appendChild(el("tr", {}, [el("th", { text: "layer \\ position" })].concat(lens.tokens.map(function (t, i) { return el("th", { text: i + " " + t }); }))));
  lens.rows.slice().reverse().forEach(function (r) {
    var tr = el("tr", {}, [el("th", { text: r.layer === null ? "embed" : "layer " + r.layer })]);
    r.positions.forEach(function (c) {
      var g = c.top[0];
      var tip = (r.layer === null ? "embed" : "layer " + r.layer) + ", position " + c.position + ": " + c.top.map(function (x) { return x.token + " " + x.prob.toFixed(4); }).join(", ");
      tr.appendChild(el("td", { style: "background:" + heat(g.prob) + ";color:" + ink(g.prob), title: tip, text: g.token + " " + Math.round(g.prob * 100) }));
    });
    lt.appendChild(tr);
  });
  s4.appendChild(lt);
  s4.appendChild(el("p", { "class": "note", text: "The last layer is the model's own prediction: the same top-1 as its logits: " + (lens.check.top1_equal ? "yes" : "NO") + ", largest difference " + lens.check.max_abs_diff + "." }));
  if (lens.track) {
    var s5 = section("answer", "4. The final answer through the layers", "The probability of " + vis(data.logits.top[0].text) + " (" + lens.track.token + ", id " + lens.track.id + "), the model's final top-1, at position " + lens.track.position + " after each layer.");
    s5.appendChild(lineChart(lens.track.rows.map(function (r) { return r.prob; }), lens.track.rows.map(function (r) { return r.layer === null ? "emb" : String(r.layer); }), "probability", true));
  }

  // 5. Attention.
  var att = data.attention;
  var s6 = section("attention", "5. Attention", att.num_heads + " heads per layer, " + att.num_kv_heads + " key/value heads. Row = query position, column = key position; darker = more attention (numbers in %). Choose a layer and a head, or click a head in the overview.");
  var layerSel = el("select", { id: "layer" }), headSel = el("select", { id: "head" });
  att.layers.forEach(function (_, l) { layerSel.appendChild(el("option", { value: l, text: "layer " + l })); });
  for (var h = 0; h < att.num_heads; h++) { headSel.appendChild(el("option", { value: h, text: "head " + h })); }
  s6.appendChild(el("p", {}, [el("label", {}, ["Layer ", layerSel]), el("label", {}, ["Head ", headSel])]));
  var headInfo = el("p", { id: "head-info" }), headBox = el("div", { id: "head-map" }), multi = el("div", { "class": "multiples", id: "multiples" });
  s6.appendChild(headInfo); s6.appendChild(headBox);
  s6.appendChild(el("h3", { text: "All heads of the layer" })); s6.appendChild(multi);
  function headTable(hd) {
    var t = el("table", { "class": "heat" });
    t.appendChild(el("tr", {}, [el("th", { text: "query \\ key" })].concat(att.tokens.map(function (x, j) { return el("th", { text: j + " " + x }); }))));
    hd.probs.forEach(function (r, i) {
      var tr = el("tr", {}, [el("th", { text: i + " " + att.tokens[i] })]);
      r.forEach(function (p, j) {
        tr.appendChild(el("td", { style: "background:" + heat(p) + ";color:" + ink(p), title: att.tokens[i] + " -> " + att.tokens[j] + ": " + p.toFixed(4), text: j <= i ? String(Math.round(p * 100)) : "" }));
      });
      t.appendChild(tr);
    });
    return t;
  }
  function mini(hd, size) {
    var n = hd.probs.length, c = size / n;
    var g = sv("svg", { width: size, height: size, viewBox: "0 0 " + size + " " + size, role: "img", "aria-label": "head " + hd.head });
    hd.probs.forEach(function (r, i) { r.forEach(function (p, j) { g.appendChild(sv("rect", { x: j * c, y: i * c, width: c + 0.3, height: c + 0.3, fill: heat(p) })); }); });
    g.appendChild(sv("rect", { x: 0, y: 0, width: size, height: size, fill: "none", stroke: "#999" }));
    return g;
  }
  function show() {
    var l = Number(layerSel.value), h = Number(headSel.value), hd = att.layers[l][h];
    var sc = hd.scores;
    headInfo.textContent = "Layer " + l + ", head " + h + " (KV head " + hd.kv_head + "): " + sc.class + "; previous " + f(sc.previous, 2) + ", first " + f(sc.first, 2) + ", self " + f(sc["self"], 2) + ", entropy " + f(sc.entropy_normalized, 2) + " of its maximum.";
    headBox.replaceChildren(headTable(hd));
    multi.replaceChildren();
    att.layers[l].forEach(function (x) {
      var fig = el("figure", { "class": x.head === h ? "on" : "", title: "head " + x.head + ": " + x.scores.class }, [mini(x, 96), el("figcaption", { text: "head " + x.head + ": " + x.scores.class })]);
      fig.addEventListener("click", function () { headSel.value = String(x.head); show(); });
      multi.appendChild(fig);
    });
  }
  layerSel.addEventListener("change", show); headSel.addEventListener("change", show);
  show();
  var strong = function (v) { return v.map(function (x) { return "layer " + x.layer + " head " + x.head + " (" + x.score.toFixed(2) + ")"; }).join(", "); };
  s6.appendChild(el("p", { text: "Strongest previous-token heads: " + strong(att.strongest_previous) + ". Strongest induction heads (" + (att.induction_input && att.induction_input.source === "text" ? "on the text" : "on a repeated random sequence") + "): " + strong(att.strongest_induction) + "." }));

  // 6. The next token.
  var lg = data.logits;
  var s7 = section("next", "6. The next token", "The logits have shape [" + lg.shape.join(", ") + "]. " + (data.next.strategy === "greedy" ? "Greedy: the most likely token is chosen." : "Sampled: temperature " + data.sample.temperature + ", top-k " + (data.sample.top_k === null ? "off" : data.sample.top_k) + ", top-p " + (data.sample.top_p === null ? "off" : data.sample.top_p) + ", seed " + data.sample.seed + "."));
  s7.appendChild(el("p", { id: "predicted" }, ["Chosen next token: ", el("strong", { "class": "mono", text: vis(data.next.text) }), " (id " + data.next.id + ", rank " + data.next.rank + ", probability " + data.next.prob.toFixed(4) + ")"]));
  var bars;
  if (data.sample) {
    var st = data.sample.steps[0];
    bars = st.candidates.map(function (c) { return { label: vis(c.text), a: c.prob, b: c.prob_final === null ? 0 : c.prob_final, cut: c.prob_final === null, drawn: c.drawn }; });
  } else {
    bars = lg.top.map(function (c, i) { return { label: vis(c.text), a: c.prob, b: i === 0 ? 1 : 0, cut: i !== 0, drawn: i === 0 }; });
  }
  s7.appendChild(barChart(bars, data.sample ? "after temperature, top-k, top-p" : "greedy (all on the top token)"));
  function barChart(items, after) {
    var row = 22, W = 900, L = 150, mid = 520, H = 30 + items.length * row;
    var max = Math.max.apply(null, items.map(function (x) { return Math.max(x.a, x.b); }).concat([1e-12]));
    var g = sv("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "bar", role: "img", "aria-label": "next-token probabilities" });
    g.appendChild(sv("text", { x: L, y: 14, "font-weight": "bold" }, "model probability (T=1)"));
    g.appendChild(sv("text", { x: mid, y: 14, "font-weight": "bold" }, after));
    items.forEach(function (x, i) {
      var y = 24 + i * row, wa = (mid - L - 80) * x.a / max, wb = (W - mid - 80) * x.b / max;
      g.appendChild(sv("text", { x: L - 8, y: y + 14, "text-anchor": "end", "font-family": "monospace" }, (x.drawn ? "\u2192 " : "") + x.label));
      g.appendChild(sv("rect", { x: L, y: y + 3, width: Math.max(wa, 0.5), height: row - 6, fill: "#7a9cc6" }));
      g.appendChild(sv("text", { x: L + wa + 4, y: y + 14 }, x.a.toFixed(4)));
      g.appendChild(sv("rect", { x: mid, y: y + 3, width: Math.max(wb, 0.5), height: row - 6, fill: x.drawn ? "#c0392b" : "#e0a050" }));
      g.appendChild(sv("text", { x: mid + wb + 4, y: y + 14 }, x.cut ? "removed" : x.b.toFixed(4)));
    });
    return g;
  }

  // 7. Generated tokens.
  if (data.generate) {
    var gen = data.generate;
    var s8 = section("generate", "7. Generated tokens", "Each token's probability in the model's distribution (T=1) and its surprisal, -log2 p, in bits.");
    var t = el("table", { "class": "plain" }, [el("tr", {}, ["step", "id", "token", "probability", "surprisal (bits)"].map(function (x) { return el("th", { text: x }); }))]);
    gen.steps.forEach(function (x, i) {
      t.appendChild(el("tr", {}, [String(i + 1), String(x.id), vis(x.text), x.prob.toFixed(4), gen.surprisal_bits[i].toFixed(2)].map(function (v) { return el("td", { "class": "mono", text: v }); })));
    });
    s8.appendChild(t);
    s8.appendChild(el("p", {}, ["Text: ", el("span", { "class": "mono", text: vis(gen.text) })]));
  }
  document.body.setAttribute("data-drawn", "yes");
})();
"##;

/// The page.
pub fn trace_html(r: &TraceReport) -> Result<String> {
    let json = serde_json::to_string(r)?;
    let title = format!("lmscope trace: {}", r.input);
    let mut s = String::with_capacity(json.len() + STYLE.len() + SCRIPT.len() + 2048);
    s += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    s += "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n";
    s += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
    s += &format!(
        "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape_html(&title)
    );
    s += "<h1>lmscope trace</h1>\n";
    s += &format!(
        "<p class=\"meta\">Text: <code>{}</code><br>Model: <code>{}</code><br>Command: <code>{}</code><br>lmscope {}</p>\n",
        escape_html(&crate::text::visible(&r.input)),
        escape_html(&r.model),
        escape_html(&r.command),
        escape_html(&r.version)
    );
    s += "<noscript><p>The pictures are drawn by a small script in this page; the data are in the trace-data block of its source.</p></noscript>\n";
    s += "<main id=\"sections\"></main>\n";
    s += "<script type=\"application/json\" id=\"trace-data\">";
    s += &script_json(&json);
    s += "</script>\n<script>";
    s += SCRIPT;
    s += "</script>\n</body>\n</html>\n";
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape_html("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
        let j = script_json(r#"{"t":"</script><!--&"}"#);
        assert!(!j.contains('<') && !j.contains('>'));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["t"], "</script><!--&");
    }
}
