#!/usr/bin/env node
// Load generator for `strata serve` (or any OpenAI-compatible server).
//
// Streams completions from N concurrent clients and prints requests/s,
// output tokens/s, and percentiles of time to first token (TTFT),
// inter-token latency (ITL) and end-to-end latency. With --prefix-test it
// measures instead how much a shared prompt prefix cuts TTFT: one request
// with a fresh prefix of P tokens, then one sharing that prefix.
//
// Node 18+ (global fetch), no packages. Usage:
//   node tests/bench/loadgen.mjs --url http://127.0.0.1:8000 [--clients 16]
//        [--requests 64] [--prompt-tokens 64] [--max-tokens 64] [--model NAME]
//   node tests/bench/loadgen.mjs --url ... --prefix-test [--prefix-tokens 1024]
//   node tests/bench/loadgen.mjs --url ... --clients 8 --cache-stats-probe 4096
//
//   node tests/bench/loadgen.mjs --url ... --trace FILE [--time-scale X]
//
//   node tests/bench/loadgen.mjs --url ... --chats U [--systems S] [--system-tokens N]
//        [--doc-tokens N] [--turns T] [--question-tokens N] [--clients C] [--max-tokens M]
//
// --chats U: U multi-turn chats (POST /v1/chat/completions, streamed) with
// shared and private prefixes: chat u has system prompt u % S (shared by
// U/S chats), its own document in its first user message, and T turns, each
// adding a question and the previous answer; C chats run at once, each turn
// after the last. Every request carries X-Session-Id and X-Workflow-Id
// "chat-u". Prints the prefix-cache hit rate (cached prompt tokens from the
// usage / prompt tokens) and TTFT, and a last line `RESULT {json}`: the
// workload of a router policy comparison (tests/bench/route_hitrate.sh).
// --tokenize-url URL: where the prompts are sized (POST /tokenize), so a
// router under test sees only the chats.
//
// --trace FILE: replays a trace of token-id prompts (`strata sim --expand`)
// in real time, each request at its arrival time, with its group_id and
// priority, and prints TTFT / end-to-end percentiles and the prefix-cache
// hit rate of the replay (cached prompt tokens from the usage / prompt
// tokens), overall and for requests with a group_id: the real-engine side
// of a `strata sim` comparison. --time-scale X multiplies the arrival times
// (2: half the request rate).
//
// --cache-stats-probe N: while the load runs, asks POST /v1/cache/stats
// about an N-token prompt (token ids) over and over, one at a time, and
// prints the latency percentiles of those answers (one every ~20 ms, so the
// probe does not itself load a small machine).
//
// Each client sends its requests one after another; --requests is the total.
// Output tokens are counted from the server's usage (stream_options.
// include_usage), not from chunks. ignore_eos keeps every answer at
// max_tokens, so runs are comparable.

const args = { url: 'http://127.0.0.1:8000', clients: 1, requests: 0, promptTokens: 64,
               maxTokens: 64, model: '', prefixTest: false, prefixTokens: 1024, seed: 1,
               cacheStatsProbe: 0, trace: '', timeScale: 1, chats: 0, systems: 4, systemTokens: 256,
               docTokens: 384, turns: 4, questionTokens: 24, tokenizeUrl: '' };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i], v = process.argv[i + 1];
  const num = () => { i++; const n = Number(v); if (!Number.isFinite(n) || n < 0) die(`${a}: not a number: ${v}`); return n; };
  switch (a) {
    case '--url': args.url = v; i++; break;
    case '--clients': args.clients = num(); break;
    case '--requests': args.requests = num(); break;
    case '--prompt-tokens': args.promptTokens = num(); break;
    case '--max-tokens': args.maxTokens = num(); break;
    case '--model': args.model = v; i++; break;
    case '--prefix-test': args.prefixTest = true; break;
    case '--prefix-tokens': args.prefixTokens = num(); break;
    case '--seed': args.seed = num(); break;
    case '--cache-stats-probe': args.cacheStatsProbe = num(); break;
    case '--trace': args.trace = v; i++; break;
    case '--time-scale': args.timeScale = num(); if (!args.timeScale) die('--time-scale: must be > 0'); break;
    case '--chats': args.chats = num(); break;
    case '--tokenize-url': args.tokenizeUrl = v; i++; break;
    case '--systems': args.systems = Math.max(1, num()); break;
    case '--system-tokens': args.systemTokens = num(); break;
    case '--doc-tokens': args.docTokens = num(); break;
    case '--turns': args.turns = Math.max(1, num()); break;
    case '--question-tokens': args.questionTokens = num(); break;
    default: die(`unknown option ${a}`);
  }
}
if (!args.requests) args.requests = args.clients * 4;

function die(msg) { console.error(`loadgen: ${msg}`); process.exit(2); }

// Deterministic pseudo-random words, so prompts differ per request but runs
// repeat.
let rng = args.seed >>> 0 || 1;
function rand() { rng ^= rng << 13; rng >>>= 0; rng ^= rng >>> 17; rng ^= rng << 5; rng >>>= 0; return rng; }
const WORDS = ('the a little girl boy dog cat sun tree park ball happy sad big small red blue ' +
               'played ran saw found wanted said went looked friend mom dad day night house ' +
               'garden bird fish toy box car water sky flower').split(' ');
function words(n) { const w = []; for (let i = 0; i < n; i++) w.push(WORDS[rand() % WORDS.length]); return w.join(' '); }

async function post(path, body) {
  const r = await fetch((path === '/tokenize' && args.tokenizeUrl || args.url) + path, { method: 'POST', headers: { 'content-type': 'application/json' },
                                          body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}: ${await r.text()}`);
  return r;
}

async function countTokens(text) {
  const r = await post('/tokenize', { model: args.model || undefined, prompt: text });
  return (await r.json()).count;
}

// A text of about n tokens (checked with /tokenize, never fewer).
async function textOfTokens(n) {
  let w = Math.max(1, Math.floor(n / 1.3)), text = words(w);
  for (let k = 0; k < 20; k++) {
    const c = await countTokens(text);
    if (c >= n) return text;
    text += ' ' + words(Math.max(1, Math.ceil((n - c) / 1.3)));
  }
  return text;
}

// A streamed POST over node:http, which (unlike fetch) has no header or
// body timeout: a request may wait in the engine's queue for minutes on a
// small machine. Resolves to the response stream once the status is 200.
const http = await import('node:http');
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
function streamPost(path, body, headers = {}) {
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(args.url + path, {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data),
                 ...headers } },
    (res) => {
      if (res.statusCode === 200) return resolve(res);
      let t = '';
      res.on('data', (c) => { t += c; });
      res.on('end', () => reject(new Error(`${path}: HTTP ${res.statusCode}: ${t}`)));
    });
    req.on('error', reject);
    req.end(data);
  });
}

// One streamed completion: returns { ttft, itls[], e2e, outTokens, cached, promptTokens, text }.
// With extra.messages it is a chat completion instead.
async function streamOne(prompt, extra = {}, headers = {}) {
  const t0 = performance.now();
  const chat = !!extra.messages;
  const body = await streamPost(chat ? '/v1/chat/completions' : '/v1/completions', {
    model: args.model || undefined, ...(chat ? {} : { prompt }), max_tokens: args.maxTokens,
    temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true },
    ...extra }, headers);
  const dec = new TextDecoder();
  let buf = '', ttft = -1, last = 0, outTokens = 0, cached = 0, promptTokens = 0, text = '';
  const itls = [];
  for await (const chunk of body) {
    buf += dec.decode(chunk, { stream: true });
    let k;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, k); buf = buf.slice(k + 2);
      if (!ev.startsWith('data: ')) continue;
      const data = ev.slice(6);
      if (data === '[DONE]') continue;
      const j = JSON.parse(data);
      if (j.usage) {
        outTokens = j.usage.completion_tokens;
        promptTokens = j.usage.prompt_tokens;
        cached = j.usage.prompt_tokens_details?.cached_tokens ?? 0;
      }
      const piece = j.choices && j.choices.length ? (chat ? j.choices[0].delta?.content : j.choices[0].text) : '';
      if (piece) {
        text += piece;
        const t = performance.now();
        if (ttft < 0) ttft = t - t0; else itls.push(t - last);
        last = t;
      }
    }
  }
  return { ttft: ttft / 1e3, itls: itls.map(x => x / 1e3), e2e: (performance.now() - t0) / 1e3, outTokens,
           cached, promptTokens, text };
}

function pct(v, p) {
  if (!v.length) return NaN;
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
}
const ms = x => `${(x * 1e3).toFixed(1)} ms`;
function summary(name, v) {
  console.log(`${name.padEnd(6)} p50 ${ms(pct(v, 50))}  p90 ${ms(pct(v, 90))}  p99 ${ms(pct(v, 99))}  (${v.length} samples)`);
}

async function prefixTest() {
  const prefix = await textOfTokens(args.prefixTokens);
  const n = await countTokens(prefix);
  // Warm the server's code paths on an unrelated prompt first.
  await streamOne(words(16));
  const a = await streamOne(prefix + ' ' + words(8));
  const b = await streamOne(prefix + ' ' + words(8));
  console.log(`prefix: ${n} tokens shared`);
  console.log(`first request  TTFT ${ms(a.ttft)}`);
  console.log(`second request TTFT ${ms(b.ttft)} (${(100 * b.ttft / a.ttft).toFixed(1)}% of the first)`);
}

// The cache stats probe (see load()): asks about the same N-token prompt
// one request at a time, a request every ~20 ms (not a flood that would
// itself load a small machine), until told to stop; then posts its samples.
const PROBE_SRC = `
const { parentPort, workerData } = require('node:worker_threads');
const net = require('node:net');
const u = new URL(workerData.url);
const ids = Array.from({ length: workerData.n }, (_, i) => 3 + ((i * 7919) % 500));
const body = Buffer.from(JSON.stringify({ model: workerData.model || undefined, prompt: ids }));
const req = Buffer.concat([Buffer.from('POST /v1/cache/stats HTTP/1.1\\r\\nHost: ' + u.host +
  '\\r\\nContent-Type: application/json\\r\\nContent-Length: ' + body.length + '\\r\\n\\r\\n'), body]);
let stop = false;
parentPort.on('message', () => { stop = true; });
const samples = [];
const sock = net.connect({ host: u.hostname, port: Number(u.port) || 80, noDelay: true });
let buf = Buffer.alloc(0), want = null;
sock.on('data', (c) => {
  buf = Buffer.concat([buf, c]);
  const k = buf.indexOf('\\r\\n\\r\\n');
  if (k < 0) return;
  const h = buf.subarray(0, k).toString();
  const m = /content-length:\\s*(\\d+)/i.exec(h);
  if (!m || buf.length < k + 4 + Number(m[1])) return;
  const status = Number(h.split(' ')[1]), text = buf.subarray(k + 4, k + 4 + Number(m[1])).toString();
  buf = buf.subarray(k + 4 + Number(m[1]));
  const w = want; want = null;
  w({ status, text });
});
sock.on('error', (e) => { throw e; });
sock.once('connect', async () => {
  while (!stop) {
    const t = performance.now();
    const r = await new Promise((res) => { want = res; sock.write(req); });
    const dt = (performance.now() - t) / 1e3;
    if (r.status !== 200) throw new Error('/v1/cache/stats: HTTP ' + r.status + ': ' + r.text);
    JSON.parse(r.text);
    samples.push(dt);
    await new Promise(res => setTimeout(res, 20));
  }
  sock.end();
  parentPort.postMessage(samples);
});
`;

async function load() {
  const prompts = [];
  for (let i = 0; i < Math.min(args.requests, 64); i++) prompts.push(await textOfTokens(args.promptTokens));
  let next = 0;
  const res = [];
  const t0 = performance.now();
  async function client() {
    for (;;) {
      const i = next++;
      if (i >= args.requests) return;
      res.push(await streamOne(prompts[i % prompts.length]));
    }
  }
  // The probe runs on a worker thread with its own event loop and heap, so
  // the clients' stream handling and garbage collection on the main thread
  // do not show up in its figures. One kept-alive TCP connection, each
  // request written at once and timed until its whole answer is in
  // (Content-Length): the server's latency, not an HTTP library's.
  let probeWorker = null, probeDone = null;
  if (args.cacheStatsProbe) {
    const { Worker } = await import('node:worker_threads');
    probeWorker = new Worker(PROBE_SRC, { eval: true, workerData: {
      url: args.url, model: args.model, n: args.cacheStatsProbe } });
    probeDone = new Promise((res, rej) => {
      probeWorker.on('message', res);
      probeWorker.on('error', rej);
    });
  }
  await Promise.all(Array.from({ length: args.clients }, client));
  let probes = [];
  if (probeWorker) {
    probeWorker.postMessage('stop');
    probes = await probeDone;
    await probeWorker.terminate();
  }
  const dt = (performance.now() - t0) / 1e3;
  const out = res.reduce((s, r) => s + r.outTokens, 0);
  console.log(`clients ${args.clients}, requests ${res.length}, prompt ~${args.promptTokens} tokens, ` +
              `max_tokens ${args.maxTokens}, ${dt.toFixed(2)} s`);
  console.log(`throughput: ${(res.length / dt).toFixed(2)} requests/s, ${(out / dt).toFixed(1)} output tokens/s`);
  summary('TTFT', res.map(r => r.ttft));
  summary('ITL', res.flatMap(r => r.itls));
  summary('E2E', res.map(r => r.e2e));
  if (args.cacheStatsProbe) {
    console.log(`cache stats of a ${args.cacheStatsProbe}-token prompt under that load:`);
    summary('stats', probes);
  }
}

async function replay() {
  const fs = await import('node:fs');
  const reqs = fs.readFileSync(args.trace, 'utf8').split('\n').filter(l => l.trim() && !l.startsWith('#'))
    .map(l => JSON.parse(l)).sort((a, b) => a.t - b.t);
  const t0 = performance.now();
  const res = await Promise.all(reqs.map(async (q) => {
    const wait = q.t * args.timeScale * 1e3 - (performance.now() - t0);
    if (wait > 0) await new Promise(r => setTimeout(r, wait));
    const extra = { max_tokens: q.output, priority: q.priority ?? 0 };
    if (q.group_id) extra.group_id = q.group_id;
    const r = await streamOne(q.prompt, extra);
    return { ...r, n: q.prompt.length, group: !!q.group_id };
  }));
  const dt = (performance.now() - t0) / 1e3;
  const sum = (v, f) => v.reduce((s, r) => s + f(r), 0);
  const grouped = res.filter(r => r.group);
  console.log(`trace ${args.trace}: ${res.length} requests in ${dt.toFixed(1)} s`);
  console.log(`TTFT mean ${ms(sum(res, r => r.ttft) / res.length)}`);
  summary('TTFT', res.map(r => r.ttft));
  summary('E2E', res.map(r => r.e2e));
  console.log(`prefix-cache hit rate: ${(100 * sum(res, r => r.cached) / sum(res, r => r.n)).toFixed(1)}% of prompt ` +
              `tokens; requests with a group_id: ${grouped.length ? (100 * sum(grouped, r => r.cached) / sum(grouped, r => r.n)).toFixed(1) : 0}%`);
}

async function chats() {
  const systems = [], docs = [];
  for (let s = 0; s < args.systems; s++) systems.push(await textOfTokens(args.systemTokens));
  for (let u = 0; u < args.chats; u++) docs.push(await textOfTokens(args.docTokens));
  // the questions too are fixed up front, so every run sends the same chats
  const questions = docs.map(() => Array.from({ length: args.turns },
                                              () => words(Math.max(1, Math.floor(args.questionTokens / 1.3)))));
  let next = 0;
  const res = [];
  const t0 = performance.now();
  async function client() {
    for (;;) {
      const u = next++;
      if (u >= args.chats) return;
      const msgs = [{ role: 'system', content: systems[u % args.systems] }];
      for (let t = 0; t < args.turns; t++) {
        msgs.push({ role: 'user', content: (t ? '' : docs[u] + '\n\n') + questions[u][t] });
        const r = await streamOne(null, { messages: msgs },
                                  { 'x-session-id': `chat-${u}`, 'x-workflow-id': `chat-${u}` });
        msgs.push({ role: 'assistant', content: r.text });
        res.push(r);
      }
    }
  }
  await Promise.all(Array.from({ length: args.clients }, client));
  const dt = (performance.now() - t0) / 1e3;
  const sum = (f) => res.reduce((s, r) => s + f(r), 0);
  const hit = sum(r => r.cached) / sum(r => r.promptTokens);
  const ttft = res.map(r => r.ttft);
  console.log(`chats ${args.chats} x ${args.turns} turns (${args.systems} system prompts of ~${args.systemTokens} ` +
              `tokens, documents of ~${args.docTokens}), ${args.clients} at once: ${res.length} requests in ` +
              `${dt.toFixed(1)} s`);
  console.log(`prefix-cache hit rate: ${(100 * hit).toFixed(1)}% of ${sum(r => r.promptTokens)} prompt tokens`);
  console.log(`TTFT mean ${ms(sum(r => r.ttft) / res.length)}`);
  summary('TTFT', ttft);
  summary('E2E', res.map(r => r.e2e));
  console.log('RESULT ' + JSON.stringify({ requests: res.length, seconds: dt, hit_rate: hit,
    prompt_tokens: sum(r => r.promptTokens), cached_tokens: sum(r => r.cached),
    ttft_mean: sum(r => r.ttft) / res.length, ttft_p50: pct(ttft, 50), ttft_p90: pct(ttft, 90),
    e2e_mean: sum(r => r.e2e) / res.length }));
}

(args.chats ? chats() : args.trace ? replay() : args.prefixTest ? prefixTest() : load())
  .catch(e => die(e.message));
