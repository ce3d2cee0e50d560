#!/usr/bin/env bash
# Renders `lmscope trace --html` in a real browser (headless Chromium from Debian's packages):
# the page loads with no console errors, the DOM after its script holds the prompt's tokens and
# the predicted token, and a screenshot is not one colour. Under CI=true a missing browser that
# cannot be installed FAILS this script; elsewhere it is reported and skipped.
# Usage: scripts/browser-test.sh [SCREENSHOT.png [PAGE.html]]   (default: temporary files)
# docs/trace.png and docs/trace.html are made by: scripts/browser-test.sh docs/trace.png docs/trace.html
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

browser=""
find_browser() {
    for b in chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null 2>&1; then browser="$b"; return 0; fi
    done
    return 1
}
if ! find_browser; then
    echo "browser-test: chromium is missing; installing Debian's package" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi
    { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium; } >&2 || true
    if ! find_browser; then
        if [ "${CI:-}" = true ]; then
            echo "browser-test: FAILED: chromium could not be installed" >&2
            exit 1
        fi
        echo "browser-test: skipped: chromium could not be installed (under CI=true this fails)" >&2
        exit 0
    fi
fi

model="${LMSCOPE_TEST_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
text="The capital of Finland is"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
shot="${1:-$work/trace.png}"
page="${2:-$work/trace.html}"
if [ -n "${LMSCOPE_BIN:-}" ]; then
    bin="$LMSCOPE_BIN"
else
    cargo build -q
    bin=target/debug/lmscope
fi
"$bin" --model "$model" trace "$text" --steps 3 --html "$page" >/dev/null
"$bin" --model "$model" --json trace "$text" > "$work/trace.json"

flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run
    --disable-component-update --disable-sync --disable-default-apps --mute-audio)
run_browser() {
    timeout 120 "$browser" "${flags[@]}" --user-data-dir="$(mktemp -d -p "$work")" "$@"
}
run_browser --enable-logging=stderr --v=0 --virtual-time-budget=5000 --dump-dom \
    "file://$(realpath "$page")" > "$work/dom.html" 2> "$work/console.log" || {
    echo "browser-test: FAILED: chromium did not load the page" >&2
    cat "$work/console.log" >&2
    exit 1
}
run_browser --hide-scrollbars --window-size=1200,2000 --virtual-time-budget=5000 \
    --screenshot="$shot" "file://$(realpath "$page")" > /dev/null 2>> "$work/shot.log" || {
    echo "browser-test: FAILED: no screenshot" >&2
    cat "$work/shot.log" >&2
    exit 1
}

fail=0
check() { echo "browser-test: $1"; }
# What the page said on the console: the page logs nothing, so any message of the page is a
# failure (Chromium writes every level as `INFO:CONSOLE:LINE] "..."`, or `CONSOLE(LINE)` in older
# versions), and so is an exception, a request the page's Content-Security-Policy blocked, or a
# failed load.
console_errors() {
    grep -E ':CONSOLE[:(]|CONSOLE\(|Uncaught|Content Security Policy|Refused to|net::ERR' "$1"
}
if console_errors "$work/console.log" >&2; then
    check "FAILED: console messages above"; fail=1
fi
# The check above must see what it looks for on this browser: a probe page that logs an error
# and makes a request its policy blocks.
cat > "$work/probe.html" <<'HTML'
<!doctype html><html><head><meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'"></head>
<body><script>console.error("probe")</script><img src="http://127.0.0.1:9/x.png"></body></html>
HTML
run_browser --enable-logging=stderr --v=0 --virtual-time-budget=2000 --dump-dom \
    "file://$work/probe.html" > /dev/null 2> "$work/probe.log" || true
if [ "$(console_errors "$work/probe.log" | grep -c .)" -lt 2 ]; then
    check "FAILED: the console check does not see a probe page's error and blocked request"
    cat "$work/probe.log" >&2; fail=1
fi
grep -q 'data-drawn="yes"' "$work/dom.html" || { check "FAILED: the page's script did not finish"; fail=1; }
# The DOM as drawn, without the scripts (the page's data are JSON in a script element: text
# found there proves nothing about what is shown).
python3 - "$work/dom.html" > "$work/drawn.html" <<'PY'
import re, sys
print(re.sub(r"<script\b.*?</script>", "", open(sys.argv[1], encoding="utf-8").read(), flags=re.S))
PY
# Every token and the predicted one, as the script wrote them (JSON-quoted text in the boxes).
expect=$(python3 - "$work/trace.json" <<'PY'
import html, json, sys
r = json.load(open(sys.argv[1]))
for t in r["tokenize"]["tokens"]:
    print(html.escape(json.dumps(t["text"], ensure_ascii=False), quote=False))
print(html.escape(json.dumps(r["next"]["text"], ensure_ascii=False), quote=False))
PY
)
while IFS= read -r piece; do
    grep -qF -- "$piece" "$work/drawn.html" || { check "FAILED: the drawn page lacks $piece"; fail=1; }
done <<< "$expect"
grep -q 'id="predicted"' "$work/drawn.html" || { check "FAILED: no predicted token"; fail=1; }
# The screenshot is not blank: more than one colour, and more than a sliver of non-white.
[ -s "$shot" ] || { check "FAILED: empty screenshot"; fail=1; }
python3 - "$shot" <<'PY' || fail=1
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w = 8, b"", 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        channels = {2: 3, 6: 4}[ctype]
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
stride = w * channels
colours, ink, total = set(), 0, 0
prev = bytearray(stride)
i = 0
for y in range(h):
    ft, line = raw[i], bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
    for x in range(stride):
        a = line[x - channels] if x >= channels else 0
        b = prev[x]; c = prev[x - channels] if x >= channels else 0
        if ft == 1: line[x] = (line[x] + a) & 255
        elif ft == 2: line[x] = (line[x] + b) & 255
        elif ft == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif ft == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    prev = line
    if y % 4 == 0:
        for x in range(0, w, 4):
            px = bytes(line[x * channels:x * channels + 3]); colours.add(px); total += 1
            ink += px != b"\xff\xff\xff"
print(f"browser-test: screenshot {w}x{h}, {len(colours)} colours, {100 * ink / total:.1f}% not white")
assert len(colours) > 8 and ink / total > 0.02, "the screenshot is blank"
PY
[ "$fail" = 0 ] || exit 1
check "ok: $(grep -c . <<< "$expect") pieces found, no console errors, screenshot $shot"
