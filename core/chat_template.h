/* Chat templates: turn an OpenAI messages list into the prompt text a chat
 * model was trained on.
 *
 * Models ship their chat format as a Jinja template (tokenizer.chat_template).
 * Debian 12 has no Jinja implementation for C and a general interpreter is
 * far more code (and attack surface) than the handful of formats in use, so
 * strata recognises the common template families from marker strings in the
 * template text and renders each family with a small hand-written C function
 * that reproduces what the real template gives with add_generation_prompt.
 * docs/chat-templates.md lists the families, the exact formats, the
 * detection rules and the known differences from Jinja.
 *
 * Typical use (the HTTP layer):
 *
 *   struct strata_chat_template t;             (once, at model load)
 *   strata_chat_template_resolve(setting, tmpl, tmpl_len, &t, err, errlen);
 *   if (t.fallback) log once: no known chat template, plain format in use
 *
 *   struct strata_chat_msg *m; size_t n;       (per request)
 *   strata_chat_msgs_from_json(messages, &m, &n, err, errlen);
 *   strata_chat_apply(&t, m, n, bos, eos, 1, &text, &len, &has_bos, err,
 *                     errlen);
 *   free(m); tokenize text, adding no BOS when has_bos; free(text);
 *
 * STRATA_CHAT_EINVAL from either call: answer 400 with err.
 */
#ifndef STRATA_CHAT_TEMPLATE_H
#define STRATA_CHAT_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

/* jansson's json_t, declared here so that users of this header need not
 * include jansson.h. */
struct json_t;

enum strata_chat_family {
  STRATA_CHAT_PLAIN = 0, /* documented fallback, "Role: text" blocks */
  STRATA_CHAT_LLAMA2,
  STRATA_CHAT_LLAMA3,
  STRATA_CHAT_CHATML, /* ChatML, Qwen */
  STRATA_CHAT_MISTRAL,
  STRATA_CHAT_ZEPHYR,
  STRATA_CHAT_GEMMA,
};

/* The exact format inside a family. Detection picks the variant whose real
 * template matches; an override by family name picks the one marked (*). */
enum strata_chat_variant {
  STRATA_CHAT_V_DEFAULT = 0, /* the family's only or usual format (*) */
  STRATA_CHAT_V_LLAMA31,     /* Llama 3.1-3.3: dated system header, ipython */
  STRATA_CHAT_V_MISTRAL_LEGACY, /* first v0.1/v0.2 template: no system role */
  STRATA_CHAT_V_MISTRAL_V1,     /* " [INST] ", system in first turn (*) */
  STRATA_CHAT_V_MISTRAL_V3,     /* "[INST] ", system in last turn, tools */
  STRATA_CHAT_V_MISTRAL_V3_TEKKEN, /* as v3 without the spaces (Nemo) */
  STRATA_CHAT_V_MISTRAL_V7,        /* [SYSTEM_PROMPT] ... (Large 2411) */
  STRATA_CHAT_V_MISTRAL_V7_TEKKEN, /* as v7 without the spaces (Small 3) */
  STRATA_CHAT_V_GEMMA_NOSYS,       /* Gemma 1/2: a system message is an error */
};

/* Rendering options beyond the variant, found in the template text. */
enum {
  STRATA_CHAT_F_BOS = 1 << 0,              /* the template emits bos_token */
  STRATA_CHAT_F_LLAMA2_EOS_SPACE = 1 << 1, /* llama2: " answer </s>" */
  STRATA_CHAT_F_TOOL_RESPONSE = 1 << 2,    /* chatml: tool -> <tool_response> */
};

struct strata_chat_template {
  enum strata_chat_family family;
  enum strata_chat_variant variant;
  unsigned flags;       /* STRATA_CHAT_F_* */
  int fallback;         /* 1: no family recognised, PLAIN in use */
  int approximate;      /* 1: family recognised by its markers only; the
                           real template differs in details we do not copy */
  char *default_system; /* chatml: system prompt the template inserts when
                           the conversation has none (Qwen); NULL if none */
  char date_string[32]; /* llama3.1: the "Today Date:" text; empty means
                           today's date, as templates using strftime_now */
};

/* One message. content need not be NUL-terminated and must be valid UTF-8
 * without NUL bytes (checked); NULL content with content_len 0 is empty.
 * Roles: system, developer (treated as system, as OpenAI does), user,
 * assistant, tool. tool_call_id is only used by the Mistral v3 tool format;
 * NULL when absent. */
struct strata_chat_msg {
  const char *role;
  const char *content;
  size_t content_len;
  const char *tool_call_id;
};

/* Return values of the functions below: 0 on success; STRATA_CHAT_EINVAL (-1)
 * when the input is at fault (an HTTP layer answers 400 with err);
 * STRATA_CHAT_ENOMEM (-2) when memory ran out (answer 500). */
#define STRATA_CHAT_EINVAL (-1)
#define STRATA_CHAT_ENOMEM (-2)

/* Recognises the family of a tokenizer.chat_template text. NULL or empty
 * text, or text of no known family, gives PLAIN with fallback set. Fails only
 * when out of memory. Free the result with strata_chat_template_free. */
int strata_chat_template_detect(const char *text, size_t len,
                                struct strata_chat_template *out, char *err,
                                size_t errlen);

/* The template of a name: a family ("llama2", "llama3", "chatml", "mistral",
 * "zephyr", "gemma", "plain") or a variant ("llama3.1", "mistral-legacy",
 * "mistral-v1", "mistral-v3", "mistral-v3-tekken", "mistral-v7",
 * "mistral-v7-tekken", "gemma2", "gemma3"). -1 for an unknown name. */
int strata_chat_template_by_name(const char *name,
                                 struct strata_chat_template *out, char *err,
                                 size_t errlen);

/* The engine.chat_template setting. An empty or NULL override detects the
 * family of model_template[0..model_template_len) (NULL: the model has none).
 * Otherwise the override is a name as above, or else the path of a file
 * holding a template text whose family is detected; a file of no known
 * family is an error, since someone chose it on purpose. */
int strata_chat_template_resolve(const char *override,
                                 const char *model_template,
                                 size_t model_template_len,
                                 struct strata_chat_template *out, char *err,
                                 size_t errlen);

void strata_chat_template_free(struct strata_chat_template *t);

/* "llama2", ..., "plain". */
const char *strata_chat_family_name(enum strata_chat_family f);
/* The most precise name of t: "mistral-v3-tekken", "llama3.1", "chatml". */
const char *strata_chat_template_name(const struct strata_chat_template *t);

/* Renders msgs[0..n) as t's model expects. bos_text and eos_text are the
 * model's BOS/EOS token texts ("<s>", "</s>"; NULL or "" when it has none)
 * for the templates that write them. With add_generation_prompt the text
 * ends where the assistant's answer begins (templates without such a prompt,
 * Llama 2 and Mistral, end with [/INST] either way).
 *
 * *adds_bos is set to 1 when the text starts with bos_text written by the
 * template: the caller must then not add a BOS token when tokenizing (and
 * must tokenize special-token texts as special tokens). 0: the template
 * writes no BOS, so the tokenizer's own add-BOS setting applies.
 *
 * On success *out is a NUL-terminated malloc'd string of *out_len bytes.
 * Errors name the message, e.g. "messages[2].role: conversation roles must
 * alternate user/assistant/user/assistant/...". */
int strata_chat_apply(const struct strata_chat_template *t,
                      const struct strata_chat_msg *msgs, size_t n,
                      const char *bos_text, const char *eos_text,
                      int add_generation_prompt, char **out, size_t *out_len,
                      int *adds_bos, char *err, size_t errlen);

/* Converts an OpenAI "messages" JSON array. Content is a string or an array
 * of {"type":"text","text":...} parts, joined with "\n" as vLLM does; other
 * part types, tool_calls, and missing user/system/tool content are errors
 * (an assistant's null content is empty). On success *msgs is one malloc'd
 * block (free() it) whose strings point into `messages` or into the block
 * itself: keep `messages` alive while using them. */
int strata_chat_msgs_from_json(const struct json_t *messages,
                               struct strata_chat_msg **msgs, size_t *n,
                               char *err, size_t errlen);

struct strata_tokenizer;
/* The prompt tokens of an OpenAI "messages" array, as the engine's server
 * builds them (and the router, to hash the same blocks): converted,
 * rendered by t, tokenized with special tokens parsed and a BOS added
 * unless the template wrote one. 0, STRATA_CHAT_ENOMEM, or -1 with the
 * reason in err (bad messages). *toks is malloc'd. */
int strata_chat_tokens(const struct strata_chat_template *t, const char *bos_text,
                       const char *eos_text, const struct strata_tokenizer *tok,
                       const struct json_t *messages, int add_generation_prompt,
                       int32_t **toks, size_t *n, char *err, size_t errlen);

#endif
