#!/usr/bin/env node
// The soak driver (tests/integration/test_soak.sh): N requests, C at a time,
// each of a random kind, and the outcome of each:
//   ok      - a whole answer (200 JSON with choices; a stream ending in [DONE])
//   error   - a clean error reached the client: a 4xx/5xx status, or an SSE
//             `data: {"error": ...}` event ending the stream
//   aborted - this client gave up on purpose (cancelled mid-stream, timed out)
//   lost    - anything else: a connection that closed without an answer or an
//             error, a truncated stream without an error event, 200 with a body
//             that is not the answer. Must be 0.
// Prints one JSON line: {"requests":N,"ok":..,"error":..,"aborted":..,"lost":..,
// "by_kind":{...},"lost_examples":[...]}. Node 18+, no packages.
import http from 'node:http';

const args = { url: '', requests: 500, concurrency: 16, seed: 1, maxTokens: 24 };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i], v = process.argv[++i];
  if (a === '--url') args.url = v;
  else if (a === '--requests') args.requests = Number(v);
  else if (a === '--concurrency') args.concurrency = Number(v);
  else if (a === '--seed') args.seed = Number(v);
  else { console.error(`soak: unknown option ${a}`); process.exit(2); }
}
let rng = args.seed >>> 0 || 1;
const rand = () => { rng ^= rng << 13; rng >>>= 0; rng ^= rng >>> 17; rng ^= rng << 5; rng >>>= 0; return rng; };
const KINDS = ['plain', 'stream', 'chat_stream', 'cancel_stream', 'cancel_plain', 'slow_reader',
               'malformed', 'bad_param', 'oversize', 'n3'];
const agent = new http.Agent({ keepAlive: true, maxSockets: args.concurrency });
const WORDS = 'once upon a time there was a little girl who liked to play in the park with her dog'.split(' ');
const prompt = () => Array.from({ length: 4 + rand() % 40 }, () => WORDS[rand() % WORDS.length]).join(' ');

function send(path, body, { abortAfterMs = 0, slow = false } = {}) {
  return new Promise((resolve) => {
    const data = Buffer.isBuffer(body) ? body : Buffer.from(body);
    let done = false;
    const finish = (o) => { if (!done) { done = true; resolve(o); } };
    const req = http.request(args.url + path, {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': data.length } }, (res) => {
      const chunks = [];
      res.on('data', (c) => {
        chunks.push(c);
        if (slow) { res.pause(); setTimeout(() => res.resume(), 30 + rand() % 70); }
      });
      res.on('end', () => finish({ status: res.statusCode, ctype: res.headers['content-type'] || '',
                                   body: Buffer.concat(chunks).toString() }));
      res.on('error', (e) => finish({ status: res.statusCode, err: e.message,
                                      body: Buffer.concat(chunks).toString() }));
      res.on('aborted', () => finish({ status: res.statusCode, err: 'aborted',
                                       body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', (e) => finish({ err: e.message }));
    if (abortAfterMs) setTimeout(() => { req.destroy(); finish({ aborted: true }); }, abortAfterMs);
    req.end(data);
  });
}

function judge(kind, r) {
  if (r.aborted) return 'aborted';
  if (r.err && !r.status) return 'lost';
  const isErrorBody = (t) => { try { const j = JSON.parse(t); return !!(j.error && j.error.message); } catch { return false; } };
  if (r.status >= 400) {
    // the engine's and router's errors are OpenAI JSON; a 413 for a too-big body is libevent's own page
    return isErrorBody(r.body) || r.status === 413 ? 'error' : 'lost';
  }
  if (r.status !== 200) return 'lost';
  if (r.ctype.startsWith('text/event-stream')) {
    const events = r.body.split('\n\n').filter(e => e.startsWith('data: ')).map(e => e.slice(6));
    if (events.length && events[events.length - 1] === '[DONE]') return 'ok';
    if (events.some(e => e !== '[DONE]' && isErrorBody(e))) return 'error';
    return 'lost';
  }
  try {
    const j = JSON.parse(r.body);
    return Array.isArray(j.choices) && j.choices.length ? 'ok' : 'lost';
  } catch { return 'lost'; }
}

async function one(kind) {
  const base = { prompt: prompt(), max_tokens: 1 + rand() % args.maxTokens, temperature: 0.8, seed: rand() % 1000 };
  switch (kind) {
    case 'plain': return send('/v1/completions', JSON.stringify(base));
    case 'n3': return send('/v1/completions', JSON.stringify({ ...base, n: 3 }));
    case 'stream': return send('/v1/completions', JSON.stringify({ ...base, stream: true }));
    case 'chat_stream':
      return send('/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: base.prompt }],
        max_tokens: base.max_tokens, stream: true, stream_options: { include_usage: true } }));
    case 'cancel_stream':
      return send('/v1/completions', JSON.stringify({ ...base, max_tokens: 200, ignore_eos: true, stream: true }),
                  { abortAfterMs: 20 + rand() % 200 });
    case 'cancel_plain':
      return send('/v1/completions', JSON.stringify({ ...base, max_tokens: 200, ignore_eos: true }),
                  { abortAfterMs: 20 + rand() % 200 });
    case 'slow_reader': return send('/v1/completions', JSON.stringify({ ...base, stream: true }), { slow: true });
    case 'malformed': {
      const s = JSON.stringify(base);
      return send('/v1/completions', s.slice(0, rand() % s.length));
    }
    case 'bad_param': return send('/v1/completions', JSON.stringify({ ...base, temperature: -3, n: 0 }));
    case 'oversize': return send('/v1/completions', Buffer.alloc(80 * 1024, 'a'));
  }
}

const res = { requests: 0, ok: 0, error: 0, aborted: 0, lost: 0, by_kind: {}, lost_examples: [] };
let next = 0;
async function worker() {
  while (next < args.requests) {
    next++;
    const kind = KINDS[rand() % KINDS.length];
    const r = await one(kind);
    const o = judge(kind, r);
    res.requests++;
    res[o]++;
    (res.by_kind[kind] ??= {})[o] = (res.by_kind[kind][o] ?? 0) + 1;
    if (o === 'lost' && res.lost_examples.length < 5)
      res.lost_examples.push({ kind, status: r.status, err: r.err, body: (r.body || '').slice(-200) });
  }
}
await Promise.all(Array.from({ length: args.concurrency }, worker));
agent.destroy();
console.log(JSON.stringify(res));
