// test/diagrams/check.js CASES.json NODE_MODULES WORKDIR: check every diagram of CASES.json
// ([{name, kind: "mermaid" | "dot", text, expect: [strings the drawing must show]}]) with the
// real renderers: Mermaid texts with mermaid.parse and mermaid.render in headless chromium
// (one page, offline, file:// only), DOT texts with `dot -Tsvg` (a non-zero exit or anything
// on stderr fails).  Prints one PASS/FAIL line per diagram and, last, "N passed, N failed";
// exits non-zero on any failure.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const [casesFile, nodeModules, work] = process.argv.slice(2);
const cases = JSON.parse(fs.readFileSync(casesFile, 'utf8'));
const chromium = process.env.CHROMIUM || 'chromium';

// the text a reader sees: tags dropped, entities decoded
function visibleText(svg) {
  return svg.replace(/<[^>]*>/g, ' ')
    .replace(/&#x([0-9a-fA-F]+);/g, (_, h) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#([0-9]+);/g, (_, d) => String.fromCodePoint(parseInt(d, 10)))
    .replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'").replace(/&nbsp;/g, ' ').replace(/&amp;/g, '&');
}
const squash = (s) => s.replace(/\s+/g, ' ');

const results = new Map();

// --- Mermaid, all in one chromium page ---
const mermaidCases = cases.filter((c) => c.kind === 'mermaid');
if (mermaidCases.length > 0) {
  fs.writeFileSync(path.join(work, 'cases.js'),
    'window.CASES = ' + JSON.stringify(mermaidCases) + ';\n');
  const page = path.join(work, 'check.html');
  fs.writeFileSync(page, `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>running</title>
<script src="file://${path.join(nodeModules, 'mermaid/dist/mermaid.min.js')}"></script>
<script src="file://${path.join(work, 'cases.js')}"></script>
</head><body><div id="stage"></div><pre id="result"></pre>
<script>
mermaid.initialize({ startOnLoad: false, securityLevel: 'strict', flowchart: { htmlLabels: true } });
(async () => {
  const out = [];
  let i = 0;
  for (const c of window.CASES) {
    const r = { name: c.name };
    try {
      await mermaid.parse(c.text);
      const { svg } = await mermaid.render('d' + (i++), c.text);
      const div = document.getElementById('stage');
      div.innerHTML = svg;
      div.querySelectorAll('style').forEach((e) => e.remove());
      r.text = div.textContent;
      r.svgBytes = svg.length;
      r.ok = true;
      div.innerHTML = '';
    } catch (e) {
      r.ok = false;
      r.error = String((e && e.message) || e).slice(0, 2000);
    }
    out.push(r);
  }
  document.getElementById('result').textContent = encodeURIComponent(JSON.stringify(out));
  document.title = 'done';
})();
</script></body></html>
`);
  const run = spawnSync('timeout', ['120', chromium, '--headless', '--no-sandbox', '--disable-gpu',
    '--disable-dev-shm-usage', '--no-first-run', '--user-data-dir=' + path.join(work, 'chromium'),
    '--virtual-time-budget=60000', '--dump-dom', 'file://' + page],
    { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
  const m = /<pre id="result">([^<]*)<\/pre>/.exec(run.stdout || '');
  if (!m || m[1] === '') {
    for (const c of mermaidCases) {
      results.set(c.name, 'chromium gave no result (exit ' + run.status + '): '
        + String(run.stderr || '').split('\n').slice(-5).join(' | '));
    }
  } else {
    for (const r of JSON.parse(decodeURIComponent(m[1]))) {
      const c = mermaidCases.find((x) => x.name === r.name);
      if (!r.ok) {
        results.set(r.name, 'mermaid: ' + r.error);
        continue;
      }
      const seen = squash(r.text);
      const missing = (c.expect || []).filter((s) => !seen.includes(squash(s)));
      results.set(r.name, missing.length
        ? 'rendered SVG lacks ' + JSON.stringify(missing) + '; its text: ' + JSON.stringify(seen.slice(0, 2000))
        : null);
    }
  }
}

// --- DOT ---
for (const c of cases.filter((x) => x.kind === 'dot')) {
  const run = spawnSync('dot', ['-Tsvg'], { input: c.text, encoding: 'utf8' });
  if (run.status !== 0 || (run.stderr || '').trim() !== '') {
    results.set(c.name, 'dot exit ' + run.status + ': ' + String(run.stderr).trim());
    continue;
  }
  const seen = squash(visibleText(run.stdout));
  const missing = (c.expect || []).filter((s) => !seen.includes(squash(s)));
  results.set(c.name, missing.length
    ? 'rendered SVG lacks ' + JSON.stringify(missing) + '; its text: ' + JSON.stringify(seen.slice(0, 2000))
    : null);
}

let passed = 0;
let failed = 0;
for (const c of cases) {
  const err = results.has(c.name) ? results.get(c.name) : 'not checked';
  if (err === null) {
    passed++;
    console.log('PASS ' + c.name);
  } else {
    failed++;
    console.log('FAIL ' + c.name + ': ' + err);
    console.log(c.text.split('\n').map((l) => '    | ' + l).join('\n'));
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
