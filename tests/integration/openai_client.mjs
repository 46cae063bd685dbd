// strata serve driven by the official `openai` npm client: models,
// completions and chat, each plain and streamed, vLLM extras passed through,
// logits processors (bad_words, logit_bias, penalties), and the client's
// typed errors for 400 and 401.
// Usage: STRATA_URL=http://127.0.0.1:PORT STRATA_KEY=KEY STRATA_EXPECT=TEXT node openai_client.mjs
import OpenAI from 'openai';

const base = process.env.STRATA_URL;
const key = process.env.STRATA_KEY;
const expect = process.env.STRATA_EXPECT; // greedy 20 tokens of "Once upon a time"
if (!base || !key || expect === undefined) {
  console.error('openai_client.mjs: set STRATA_URL, STRATA_KEY and STRATA_EXPECT');
  process.exit(2);
}
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });
let pass = 0;
let fail = 0;
function check(name, cond, info) {
  if (cond) pass++;
  else {
    fail++;
    console.log(`FAIL: ${name}${info === undefined ? '' : ': ' + JSON.stringify(info)}`);
  }
}

const models = await client.models.list();
const model = models.data[0]?.id;
check('models.list', model === 'stories260K', models.data);

// completions
const c = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
check('completion text = strata generate', c.choices[0].text === expect, c.choices[0].text);
check('completion finish_reason', c.choices[0].finish_reason === 'length', c.choices[0].finish_reason);
check('completion usage', c.usage?.prompt_tokens === 5 && c.usage?.completion_tokens === 20, c.usage);

// a batch of prompts: choices 2i, 2i + 1 answer prompt i
const batch = await client.completions.create({
  model, prompt: ['Once upon a time', 'The dog'], n: 2, max_tokens: 20, temperature: 0 });
check('batch: 4 choices in order', batch.choices.map((x) => x.index).join() === '0,1,2,3', batch.choices);
check('batch: prompt 0 = strata generate', batch.choices[0].text === expect && batch.choices[1].text === expect,
      batch.choices);
check('batch: usage of both prompts', batch.usage?.prompt_tokens > 5 && batch.usage?.completion_tokens === 80,
      batch.usage);

const cs = await client.completions.create({
  model, prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
let text = '';
let usage = null;
let finish = null;
for await (const chunk of cs) {
  if (chunk.choices.length) {
    text += chunk.choices[0].text;
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
  if (chunk.usage) usage = chunk.usage;
}
check('completion stream text', text === expect, text);
check('completion stream finish', finish === 'length', finish);
check('completion stream usage', usage?.completion_tokens === 20, usage);

// n, seed and the vLLM extras go through the client untouched
const n3 = await client.completions.create({
  model, prompt: 'Lily', max_tokens: 12, n: 3, seed: 5, temperature: 0.8, top_k: 20, min_p: 0.05,
  metadata: { client: 'openai-node' },
});
check('n=3', n3.choices.length === 3 && n3.choices.every((x, i) => x.index === i), n3.choices);
check('metadata echoed', n3.metadata?.client === 'openai-node', n3.metadata);
const n3b = await client.completions.create({
  model, prompt: 'Lily', max_tokens: 12, n: 3, seed: 5, temperature: 0.8, top_k: 20, min_p: 0.05,
});
check('seeded reproducible', JSON.stringify(n3.choices.map((x) => x.text)) === JSON.stringify(n3b.choices.map((x) => x.text)));

// chat
const messages = [
  { role: 'system', content: 'You tell short stories.' },
  { role: 'user', content: 'Tell me about a cat.' },
];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });
const content = chat.choices[0].message.content;
check('chat role', chat.choices[0].message.role === 'assistant', chat.choices[0].message);
check('chat content', typeof content === 'string' && content.length > 0, content);
check('chat usage', chat.usage?.completion_tokens > 0 && chat.usage.completion_tokens <= 24, chat.usage);

const chs = await client.chat.completions.create({
  model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
});
let ctext = '';
let role = null;
let cusage = null;
for await (const chunk of chs) {
  const d = chunk.choices[0]?.delta;
  if (d?.role) role = d.role;
  if (d?.content) ctext += d.content;
  if (chunk.usage) cusage = chunk.usage;
}
check('chat stream role', role === 'assistant', role);
check('chat stream text = non-stream', ctext === content, { ctext, content });
check('chat stream usage', cusage?.completion_tokens === chat.usage.completion_tokens, cusage);

// logits processors: OpenAI's own fields and vLLM's bad_words through the client
const lily = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0 });
check('base answer names Lily', lily.choices[0].text.includes('Lily'), lily.choices[0].text);
const banned = await client.completions.create({
  model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, bad_words: ['Lily'],
  presence_penalty: 0.5, frequency_penalty: 0.2,
});
check('bad_words through the client', !banned.choices[0].text.includes('Lily'), banned.choices[0].text);
const forced = await client.chat.completions.create({
  model, messages, max_tokens: 8, temperature: 0, logit_bias: { 317: 100 },
});
check('chat logit_bias +100', forced.choices[0].message.content.trim().split(/\s+/).every((w) => w === 'Lily'),
  forced.choices[0].message.content);
try {
  await client.chat.completions.create({ model, messages, logit_bias: { 317: 150 } });
  check('logit_bias 400 raised', false);
} catch (e) {
  check('logit_bias 400 param', e.status === 400 && e.param === 'logit_bias', String(e));
}

// errors come back as the client's typed errors
try {
  await client.completions.create({ model, prompt: 'x', temperature: 7 });
  check('400 raised', false);
} catch (e) {
  check('400 is BadRequestError', e instanceof OpenAI.BadRequestError && e.status === 400, String(e));
  check('400 param', e.param === 'temperature', e.param);
}
try {
  await client.completions.create({ model: 'no-such-model', prompt: 'x' });
  check('unknown model raised', false);
} catch (e) {
  check('unknown model 400', e.status === 400 && e.code === 'model_not_found', String(e));
}
const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
try {
  await wrong.models.list();
  check('401 raised', false);
} catch (e) {
  check('401 is AuthenticationError', e instanceof OpenAI.AuthenticationError && e.status === 401, String(e));
}

console.log(`openai client tests: ${pass} passed, ${fail} failed`);
process.exit(fail ? 1 : 0);
