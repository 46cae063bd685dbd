// Multi-agent load generator (docs/agents.md): many concurrent workflows
// through `strata route`, each of five agents sharing one long context.
//
//   node tests/bench/agents.mjs --url ROUTER [--workflows 40] [--concurrency 8]
//        [--context-tokens 1500] [--max-tokens 16] [--pause 0.5] [--seed 1]
//        [--no-declare]
//
// A workflow: a planner turn; then three workers in parallel, each with a
// first turn, a tool-call pause (--pause seconds, scaled 0.5x-1.5x at
// random), and a second turn carrying its first answer and the tool's
// result; then a reviewer turn with the workers' answers. Every turn's
// prompt starts with the workflow's shared context (a system message of
// about --context-tokens tokens, sized with POST /tokenize); each agent's
// second turn extends its first. The workflow is declared first
// (POST /v1/workflows with its step graph and context; --no-declare: only
// headers), and every request carries X-Workflow-Id, X-Agent-Id and
// X-Workflow-Step. At most --concurrency workflows run at once.
//
// Prints one line per workflow count milestone and, last, a line
// `RESULT {json}`: workflows, requests, seconds, the prefix-cache hit rate
// (cached / prompt tokens over every answer's usage), tokens recomputed
// (prompt tokens not from the cache), and workflow completion time mean,
// p50 and p99 in seconds.
const args = { url: '', workflows: 40, concurrency: 8, contextTokens: 1500, maxTokens: 16,
               pause: 0.5, seed: 1, declare: true, prefill: true };
function die(m) { console.error('agents.mjs: ' + m); process.exit(2); }
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i], v = process.argv[i + 1];
  const num = () => { i++; const x = Number(v); if (!Number.isFinite(x) || x < 0) die(a + ': not a number'); return x; };
  switch (a) {
    case '--url': args.url = v; i++; break;
    case '--workflows': args.workflows = num(); break;
    case '--concurrency': args.concurrency = Math.max(1, num()); break;
    case '--context-tokens': args.contextTokens = num(); break;
    case '--max-tokens': args.maxTokens = Math.max(1, num()); break;
    case '--pause': args.pause = num(); break;
    case '--seed': args.seed = num(); break;
    case '--no-declare': args.declare = false; break;
    case '--no-prefill': args.prefill = false; break;
    default: die('unknown argument ' + a);
  }
}
if (!args.url) die('--url is required');

let state = args.seed >>> 0 || 1;
function rand() { state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0; return state; }
const WORDS = ('the a little girl boy dog cat sun tree park ball happy sad big small red blue ' +
  'green house river bird fish cake toy friend mom dad school garden flower rain snow star moon ' +
  'jump run play sing read draw swim walk look find help share smile laugh cry sleep eat').split(' ');
function words(n) { const w = []; for (let i = 0; i < n; i++) w.push(WORDS[rand() % WORDS.length]); return w.join(' '); }

async function call(method, path, body, headers = {}) {
  const r = await fetch(args.url + path, { method, body: body === undefined ? undefined : JSON.stringify(body),
    headers: { 'content-type': 'application/json', ...headers } });
  const t = await r.text();
  let j;
  try { j = JSON.parse(t); } catch { j = null; }
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${t.slice(0, 300)}`);
  return j;
}

// A text of about n tokens (never fewer), sized with the router's /tokenize.
async function textOf(n) {
  let text = words(Math.max(1, Math.floor(n / 1.3)));
  for (let k = 0; k < 8; k++) {
    const c = (await call('POST', '/tokenize', { prompt: text })).count;
    if (c >= n) return text;
    text += ' ' + words(Math.max(1, Math.ceil((n - c) / 1.3)));
  }
  return text;
}

const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
const usage = { prompt: 0, cached: 0, requests: 0 };

async function turn(wf, agent, step, ctx, msgs) {
  const j = await call('POST', '/v1/chat/completions',
    { messages: [{ role: 'system', content: ctx }, ...msgs], max_tokens: args.maxTokens, temperature: 0, ignore_eos: true },
    { 'X-Workflow-Id': wf, 'X-Agent-Id': agent, 'X-Workflow-Step': step });
  usage.requests++;
  usage.prompt += j.usage.prompt_tokens;
  usage.cached += j.usage.prompt_tokens_details?.cached_tokens ?? 0;
  return j.choices[0].message.content;
}

const RUN = `${process.pid}-${Date.now()}`;
async function workflow(k, ctx) {
  const wf = `bench-${RUN}-${k}`;
  const t0 = performance.now();
  const workers = ['worker1', 'worker2', 'worker3'];
  if (args.declare)
    await call('POST', '/v1/workflows', { id: wf, context: ctx, prefill: args.prefill,
      agents: ['planner', ...workers, 'reviewer'],
      steps: [{ name: 'plan', agent: 'planner' },
        ...workers.flatMap((w) => [{ name: `${w}-a`, agent: w, after: ['plan'] },
                                   { name: `${w}-b`, agent: w, after: [`${w}-a`] }]),
        { name: 'review', agent: 'reviewer', after: workers.map((w) => `${w}-b`) }] });
  const plan = await turn(wf, 'planner', 'plan', ctx, [{ role: 'user', content: 'Plan the work: ' + words(24) }]);
  const outs = await Promise.all(workers.map(async (w) => {
    const ask = [{ role: 'user', content: `You are ${w}. The plan:${plan} Do your part: ` + words(16) }];
    const first = await turn(wf, w, `${w}-a`, ctx, ask);
    await sleep(args.pause * (0.5 + (rand() % 1000) / 1000)); // the tool runs
    return turn(wf, w, `${w}-b`, ctx, [...ask, { role: 'assistant', content: first },
      { role: 'user', content: 'Tool result: ' + words(32) + ' Finish your part.' }]);
  }));
  await turn(wf, 'reviewer', 'review', ctx, [{ role: 'user', content: 'Review: ' + outs.join(' | ') }]);
  if (args.declare) await call('DELETE', `/v1/workflows/${encodeURIComponent(wf)}`);
  return (performance.now() - t0) / 1000;
}

const contexts = [];
for (let k = 0; k < args.workflows; k++) contexts.push(await textOf(args.contextTokens));
const t0 = performance.now();
const times = [];
let next = 0;
await Promise.all(Array.from({ length: Math.min(args.concurrency, args.workflows) }, async () => {
  while (next < args.workflows) {
    const k = next++;
    times.push(await workflow(k, contexts[k]));
    if (times.length % 10 === 0) console.log(`${times.length} workflows done`);
  }
}));
const dt = (performance.now() - t0) / 1000;
times.sort((a, b) => a - b);
const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
console.log('RESULT ' + JSON.stringify({ workflows: times.length, requests: usage.requests, seconds: dt,
  hit_rate: usage.prompt ? usage.cached / usage.prompt : 0, prompt_tokens: usage.prompt,
  recomputed_tokens: usage.prompt - usage.cached,
  wf_mean: times.reduce((a, b) => a + b, 0) / times.length, wf_p50: q(0.5), wf_p99: q(0.99) }));
