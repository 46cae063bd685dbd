// A three-agent pipeline through `strata route` (docs/agents.md): a planner
// outlines a story, a writer writes it from the outline, an editor shortens
// the draft. Completions go through the official `openai` npm client with
// three extra headers; messages, barriers and step results are plain HTTP.
// The agents run concurrently and coordinate only through the router.
//
//   STRATA_URL=http://127.0.0.1:8080 [STRATA_KEY=...] node pipeline.mjs
//
// Exits non-zero if any part of the protocol does not hold (the test suite
// runs it: tests/integration/test_openai_client.sh).
import OpenAI from "openai";

const base = process.env.STRATA_URL ?? "http://127.0.0.1:8080";
const key = process.env.STRATA_KEY ?? "none";
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key });
const wf = `story-${process.pid}-${Date.now()}`;
const SYSTEM =
  "You are a team of three story writers for small children. A planner outlines the story, " +
  "a writer writes it and an editor makes it short. Use simple words about animals and friends.";

// plain HTTP to the router's workflow API
async function api(method, path, body) {
  const r = await fetch(`${base}/v1/workflows${path}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const j = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

// one agent turn: the workflow, agent and step ride along as headers
async function turn(agent, step, user) {
  const c = await client.chat.completions.create(
    {
      model: "stories260K",
      messages: [
        { role: "system", content: SYSTEM },
        { role: "user", content: user },
      ],
      max_tokens: 24,
      temperature: 0,
    },
    { headers: { "X-Workflow-Id": wf, "X-Agent-Id": agent, "X-Workflow-Step": step } },
  );
  return c.choices[0].message.content;
}

// 1. declare: agents, the step graph, and the shared context the router
//    has prefilled and kept on the instance the workflow is bound to
await api("POST", "", {
  id: wf,
  agents: ["planner", "writer", "editor"],
  steps: [
    { name: "plan", agent: "planner" },
    { name: "write", agent: "writer", after: ["plan"] },
    { name: "edit", agent: "editor", after: ["write"] },
  ],
  context: SYSTEM,
});

const planner = async () => {
  const outline = await turn("planner", "plan", "Outline a story about a cat and a dog.");
  // 2. an A2A-shaped message to the writer
  await api("POST", `/${wf}/messages`, {
    from: "planner",
    to: "writer",
    parts: [{ kind: "text", text: outline }],
  });
  return outline;
};

const writer = async () => {
  // 3. a long poll: answered as soon as the planner's message arrives
  const inbox = await api("GET", `/${wf}/messages?agent=writer&timeout=60`);
  if (inbox.data.length !== 1 || inbox.data[0].from !== "planner")
    throw new Error(`writer: unexpected inbox ${JSON.stringify(inbox)}`);
  const outline = inbox.data[0].message.parts[0].text;
  const draft = await turn("writer", "write", `Write the story from this outline:${outline}`);
  // 4. a barrier: the writer hands over only once the editor is there too
  await api("POST", `/${wf}/barriers/handoff`, { parties: 2, timeout: 60 });
  return draft;
};

const editor = async () => {
  await api("POST", `/${wf}/barriers/handoff`, { parties: 2, timeout: 60 });
  // 5. wait for the writer's step and receive its output (the answer's text)
  const done = await api("GET", `/${wf}/steps?wait_for=write&timeout=60`);
  const draft = done.data[0].output;
  return turn("editor", "edit", `Make this story shorter:${draft}`);
};

const [outline, draft, final] = await Promise.all([planner(), writer(), editor()]);
const state = await api("GET", `/${wf}`);
console.log(`outline:${outline}\ndraft:${draft}\nfinal:${final}`);
console.log(
  `steps done ${state.steps_done}/3, requests ${state.requests}, instance ${state.instance}, ` +
    `context ${state.context.prefill}, cached prompt tokens ${state.cache.cached_tokens}/${state.cache.prompt_tokens}`,
);
if (state.steps_done !== 3 || state.requests !== 3 || state.moves !== 0)
  throw new Error(`unexpected workflow state ${JSON.stringify(state)}`);
if (state.steps.find((s) => s.name === "write").output !== draft)
  throw new Error("the write step's output is not the writer's answer");
// 6. the workflow is over: the router releases what it kept for it
await api("DELETE", `/${wf}`);
