/* Chat templates: each family's real tokenizer.chat_template (the texts in
 * tests/data/chat_templates/) is recognised, and renders the exact text the
 * Jinja template gives with add_generation_prompt=true. The expected strings
 * are written out by hand from the template logic. */
#include "config.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat_template.h"
#include "gguf.h"
#include "testutil.h"
#include "util.h"

#define MSG(r, c)                                                              \
  { r, c, sizeof(c) - 1, NULL }

/* The two conversations every family renders. */
static const struct strata_chat_msg CONV[] = {
    MSG("system", "Be brief."),
    MSG("user", "Hello!"),
    MSG("assistant", "Hi. How can I help?"),
    MSG("user", "What is 2+2?"),
};
static const struct strata_chat_msg USER_ONLY[] = {MSG("user", "Hello!")};

/* Whitespace at the edges, to tell trimming templates from the others. */
static const struct strata_chat_msg SPACED[] = {
    MSG("system", "  Be brief. "),
    MSG("user", " Hello! "),
    MSG("assistant", "  Hi.\n"),
    MSG("user", "Bye "),
};

#define N(a) STRATA_ARRAY_LEN(a)

static char *tmpl_text(const char *file) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/data/chat_templates/%s", test_srcdir(),
           file);
  char *data = NULL, err[256];
  size_t len;
  if (strata_read_file(path, &data, &len, err, sizeof err) != 0)
    ck_abort_msg("%s", err);
  return data;
}

static void detect_file(const char *file, struct strata_chat_template *t) {
  char *text = tmpl_text(file), err[256];
  ck_assert_int_eq(
      strata_chat_template_detect(text, strlen(text), t, err, sizeof err), 0);
  free(text);
}

/* Detects file and checks the family, variant and that the match is exact. */
static void detect_exact(const char *file, struct strata_chat_template *t,
                         enum strata_chat_family f,
                         enum strata_chat_variant v) {
  detect_file(file, t);
  ck_assert_msg(t->family == f, "%s: family %s", file,
                strata_chat_family_name(t->family));
  ck_assert_msg(t->variant == v, "%s: variant %s", file,
                strata_chat_template_name(t));
  ck_assert_msg(!t->fallback && !t->approximate, "%s: fallback %d approx %d",
                file, t->fallback, t->approximate);
}

static void expect_gen(const struct strata_chat_template *t,
                       const struct strata_chat_msg *m, size_t n,
                       const char *bos, const char *eos, int gen,
                       const char *want, int want_bos) {
  char *out = NULL, err[256] = "";
  size_t len = 0;
  int adds_bos = -1;
  int rc = strata_chat_apply(t, m, n, bos, eos, gen, &out, &len, &adds_bos, err,
                             sizeof err);
  ck_assert_msg(rc == 0, "%s: %s", strata_chat_template_name(t), err);
  ck_assert_msg(strcmp(out, want) == 0, "%s:\n got: [%s]\nwant: [%s]",
                strata_chat_template_name(t), out, want);
  ck_assert_uint_eq(len, strlen(want));
  ck_assert_int_eq(adds_bos, want_bos);
  free(out);
}

static void expect(const struct strata_chat_template *t,
                   const struct strata_chat_msg *m, size_t n, const char *bos,
                   const char *eos, const char *want, int want_bos) {
  expect_gen(t, m, n, bos, eos, 1, want, want_bos);
}

static void expect_error(const struct strata_chat_template *t,
                         const struct strata_chat_msg *m, size_t n,
                         const char *want_in_err) {
  char *out = (char *)"unset", err[256] = "";
  int rc = strata_chat_apply(t, m, n, "<s>", "</s>", 1, &out, NULL, NULL, err,
                             sizeof err);
  ck_assert_msg(rc == STRATA_CHAT_EINVAL, "%s: rc %d, want an error with '%s'",
                strata_chat_template_name(t), rc, want_in_err);
  ck_assert_ptr_null(out);
  ck_assert_msg(strstr(err, want_in_err), "error [%s] lacks [%s]", err,
                want_in_err);
}

/* The expected prompts below are laid out one turn per line. */
/* clang-format off */

/* ---- Llama 2 ------------------------------------------------------------- */

START_TEST(llama2) {
  struct strata_chat_template t;
  detect_exact("llama-2-7b-chat.jinja", &t, STRATA_CHAT_LLAMA2,
               STRATA_CHAT_V_DEFAULT);
  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello! [/INST]"
         " Hi. How can I help? </s>"
         "<s>[INST] What is 2+2? [/INST]",
         1);
  expect(&t, USER_ONLY, 1, "<s>", "</s>", "<s>[INST] Hello! [/INST]", 1);
  /* content.strip() on every turn, system text kept inside the SYS block */
  expect(&t, SPACED, N(SPACED), "<s>", "</s>",
         "<s>[INST] <<SYS>>\n  Be brief. \n<</SYS>>\n\n Hello! [/INST]"
         " Hi. </s>"
         "<s>[INST] Bye [/INST]",
         1);
  /* strip() applies to the whole '<<SYS>>...' + content string */
  const struct strata_chat_msg blank[] = {MSG("system", "S"),
                                          MSG("user", " \n ")};
  expect(&t, blank, 2, "<s>", "</s>",
         "<s>[INST] <<SYS>>\nS\n<</SYS>> [/INST]", 1);
  /* nothing but a system message: the template writes nothing */
  expect(&t, CONV, 1, "<s>", "</s>", "", 0);
  /* a system message at an odd place is dropped, as the template does */
  const struct strata_chat_msg odd[] = {MSG("user", "a"), MSG("system", "x"),
                                        MSG("user", "b")};
  expect(&t, odd, 3, "<s>", "</s>",
         "<s>[INST] a [/INST]"
         "<s>[INST] b [/INST]",
         1);

  const struct strata_chat_msg uu[] = {MSG("user", "a"), MSG("user", "b")};
  expect_error(&t, uu, 2,
               "messages[1].role: conversation roles must alternate");
  const struct strata_chat_msg sa[] = {MSG("system", "s"),
                                       MSG("assistant", "a")};
  expect_error(&t, sa, 2,
               "messages[1].role: conversation roles must alternate");
  const struct strata_chat_msg tool[] = {MSG("user", "a"), MSG("tool", "b")};
  expect_error(&t, tool, 2,
               "messages[1].role: the llama2 template has no tool");
  strata_chat_template_free(&t);
}
END_TEST

/* ---- Llama 3 ------------------------------------------------------------- */

#define L3(role, text) \
  "<|start_header_id|>" role "<|end_header_id|>\n\n" text "<|eot_id|>"
#define L3GEN "<|start_header_id|>assistant<|end_header_id|>\n\n"
#define L31SYS(date, text)                                         \
  "<|start_header_id|>system<|end_header_id|>\n\n"                 \
  "Cutting Knowledge Date: December 2023\nToday Date: " date "\n\n" \
  text "<|eot_id|>"

START_TEST(llama3) {
  struct strata_chat_template t;
  detect_exact("meta-llama-3-8b-instruct.jinja", &t, STRATA_CHAT_LLAMA3,
               STRATA_CHAT_V_DEFAULT);
  const char *bos = "<|begin_of_text|>", *eos = "<|eot_id|>";
  expect(&t, CONV, N(CONV), bos, eos,
         "<|begin_of_text|>"
         L3("system", "Be brief.")
         L3("user", "Hello!")
         L3("assistant", "Hi. How can I help?")
         L3("user", "What is 2+2?")
         L3GEN,
         1);
  expect(&t, USER_ONLY, 1, bos, eos,
         "<|begin_of_text|>"
         L3("user", "Hello!")
         L3GEN,
         1);
  expect(&t, SPACED, N(SPACED), bos, eos,
         "<|begin_of_text|>"
         L3("system", "Be brief.")
         L3("user", "Hello!")
         L3("assistant", "Hi.")
         L3("user", "Bye")
         L3GEN,
         1);
  expect_gen(&t, USER_ONLY, 1, bos, eos, 0,
             "<|begin_of_text|>" L3("user", "Hello!"), 1);
  /* trim is Python's: NBSP, U+3000, U+2003 go; U+200B (not a space) stays */
  const struct strata_chat_msg uni[] = {
      MSG("user", "\xc2\xa0\xe3\x80\x80Hi\xe2\x80\x83\x1f"),
      MSG("assistant", "\xe2\x80\x8bHo\xe2\x80\x8b")};
  expect_gen(&t, uni, 2, bos, eos, 0,
             "<|begin_of_text|>"
             L3("user", "Hi")
             L3("assistant", "\xe2\x80\x8bHo\xe2\x80\x8b"),
             1);
  /* the role is written as given: developer is system, tool is tool */
  const struct strata_chat_msg dev[] = {MSG("developer", "D"),
                                        MSG("user", "U"), MSG("tool", "T")};
  expect(&t, dev, 3, bos, eos,
         "<|begin_of_text|>"
         L3("system", "D")
         L3("user", "U")
         L3("tool", "T")
         L3GEN,
         1);
  /* a model without BOS text: nothing to write, nothing claimed */
  expect(&t, USER_ONLY, 1, NULL, NULL, L3("user", "Hello!") L3GEN, 0);
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(llama31) {
  struct strata_chat_template t;
  detect_exact("llama-3.1-8b-instruct.jinja", &t, STRATA_CHAT_LLAMA3,
               STRATA_CHAT_V_LLAMA31);
  ck_assert_str_eq(t.date_string, "26 Jul 2024");
  const char *bos = "<|begin_of_text|>", *eos = "<|eot_id|>";
  expect(&t, CONV, N(CONV), bos, eos,
         "<|begin_of_text|>"
         L31SYS("26 Jul 2024", "Be brief.")
         L3("user", "Hello!")
         L3("assistant", "Hi. How can I help?")
         L3("user", "What is 2+2?")
         L3GEN,
         1);
  /* the system turn is always there */
  expect(&t, USER_ONLY, 1, bos, eos,
         "<|begin_of_text|>"
         L31SYS("26 Jul 2024", "")
         L3("user", "Hello!")
         L3GEN,
         1);
  /* the system text is trimmed too */
  expect(&t, SPACED, 2, bos, eos,
         "<|begin_of_text|>"
         L31SYS("26 Jul 2024", "Be brief.")
         L3("user", "Hello!")
         L3GEN,
         1);
  /* tool results: an ipython turn holding content|tojson (a string is
   * "iterable" in Jinja, so plain text is written as a JSON string too) */
  const struct strata_chat_msg tool[] = {
      MSG("user", "Weather?"),
      MSG("tool", "{\"temp\": 12}\n\x01\\\xc3\xa9")};
  expect(&t, tool, 2, bos, eos,
         "<|begin_of_text|>"
         L31SYS("26 Jul 2024", "")
         L3("user", "Weather?")
         L3("ipython", "\"{\\\"temp\\\": 12}\\n\\u0001\\\\\xc3\xa9\"")
         L3GEN,
         1);
  strata_chat_template_free(&t);

  /* Llama 3.2 takes the date from strftime_now: today */
  detect_exact("llama-3.2-3b-instruct.jinja", &t, STRATA_CHAT_LLAMA3,
               STRATA_CHAT_V_LLAMA31);
  ck_assert_str_eq(t.date_string, "");
  char today[32], want[512];
  time_t now = time(NULL);
  struct tm tm;
  localtime_r(&now, &tm);
  strftime(today, sizeof today, "%d %b %Y", &tm);
  snprintf(want, sizeof want,
           "<|begin_of_text|>"
           "<|start_header_id|>system<|end_header_id|>\n\n"
           "Cutting Knowledge Date: December 2023\nToday Date: %s\n\n"
           "<|eot_id|>"
           L3("user", "Hello!")
           L3GEN,
           today);
  expect(&t, USER_ONLY, 1, bos, eos, want, 1);
  /* callers may pin the date */
  snprintf(t.date_string, sizeof t.date_string, "01 Jan 2025");
  expect(&t, USER_ONLY, 1, bos, eos,
         "<|begin_of_text|>"
         L31SYS("01 Jan 2025", "")
         L3("user", "Hello!")
         L3GEN,
         1);
  strata_chat_template_free(&t);
}
END_TEST

/* ---- ChatML / Qwen ------------------------------------------------------- */

#define IM(role, text) "<|im_start|>" role "\n" text "<|im_end|>\n"
#define IMGEN "<|im_start|>assistant\n"

START_TEST(qwen2) {
  struct strata_chat_template t;
  detect_exact("qwen2-7b-instruct.jinja", &t, STRATA_CHAT_CHATML,
               STRATA_CHAT_V_DEFAULT);
  ck_assert_str_eq(t.default_system, "You are a helpful assistant.");
  ck_assert_uint_eq(t.flags, 0);
  expect(&t, CONV, N(CONV), NULL, "<|im_end|>",
         IM("system", "Be brief.")
         IM("user", "Hello!")
         IM("assistant", "Hi. How can I help?")
         IM("user", "What is 2+2?")
         IMGEN,
         0);
  expect(&t, USER_ONLY, 1, NULL, "<|im_end|>",
         IM("system", "You are a helpful assistant.")
         IM("user", "Hello!")
         IMGEN,
         0);
  /* no trimming in ChatML */
  expect_gen(&t, SPACED, 2, NULL, NULL, 0,
             IM("system", "  Be brief. ")
             IM("user", " Hello! "),
             0);
  /* a tool message keeps its role */
  const struct strata_chat_msg tool[] = {MSG("user", "U"), MSG("tool", "T")};
  expect(&t, tool, 2, NULL, NULL,
         IM("system", "You are a helpful assistant.")
         IM("user", "U")
         IM("tool", "T")
         IMGEN,
         0);
  strata_chat_template_free(&t);
}
END_TEST

#define QWEN25_SYS \
  "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

START_TEST(qwen25) {
  struct strata_chat_template t;
  detect_exact("qwen2.5-7b-instruct.jinja", &t, STRATA_CHAT_CHATML,
               STRATA_CHAT_V_DEFAULT);
  ck_assert_str_eq(t.default_system, QWEN25_SYS);
  ck_assert_uint_eq(t.flags, STRATA_CHAT_F_TOOL_RESPONSE);
  expect(&t, CONV, N(CONV), NULL, "<|im_end|>",
         IM("system", "Be brief.")
         IM("user", "Hello!")
         IM("assistant", "Hi. How can I help?")
         IM("user", "What is 2+2?")
         IMGEN,
         0);
  expect(&t, USER_ONLY, 1, NULL, "<|im_end|>",
         IM("system", QWEN25_SYS)
         IM("user", "Hello!")
         IMGEN,
         0);
  /* consecutive tool results share one user turn */
  const struct strata_chat_msg tool[] = {
      MSG("user", "Weather in Paris?"), MSG("assistant", "Let me check."),
      MSG("tool", "sunny"), MSG("tool", "12C"), MSG("user", "Thanks"),
      MSG("tool", "late")};
  expect(&t, tool, N(tool), NULL, NULL,
         IM("system", QWEN25_SYS)
         IM("user", "Weather in Paris?")
         IM("assistant", "Let me check.")
         "<|im_start|>user"
         "\n<tool_response>\nsunny\n</tool_response>"
         "\n<tool_response>\n12C\n</tool_response>"
         "<|im_end|>\n"
         IM("user", "Thanks")
         "<|im_start|>user"
         "\n<tool_response>\nlate\n</tool_response>"
         "<|im_end|>\n"
         IMGEN,
         0);
  strata_chat_template_free(&t);
}
END_TEST

/* The Qwen vocabulary in ../shared carries a real template (Qwen1.5's: the
 * default system prompt has no full stop). */
START_TEST(qwen_gguf) {
  char *path = test_shared_path("vocab/ggml-vocab-qwen2.gguf");
  if (access(path, R_OK) != 0) {
    free(path);
    return; /* ../shared absent: nothing to check */
  }
  strata_gguf_t *g = NULL;
  char err[256];
  ck_assert_int_eq(strata_gguf_open(path, &g, err, sizeof err), 0);
  free(path);
  const char *text;
  size_t len;
  ck_assert_int_eq(
      strata_gguf_get_string(g, "tokenizer.chat_template", &text, &len), 0);
  struct strata_chat_template t;
  ck_assert_int_eq(strata_chat_template_detect(text, len, &t, err, sizeof err),
                   0);
  strata_gguf_close(g);
  ck_assert_int_eq(t.family, STRATA_CHAT_CHATML);
  ck_assert(!t.fallback && !t.approximate);
  ck_assert_str_eq(t.default_system, "You are a helpful assistant");
  expect(&t, USER_ONLY, 1, NULL, "<|endoftext|>",
         IM("system", "You are a helpful assistant")
         IM("user", "Hello!")
         IMGEN,
         0);
  strata_chat_template_free(&t);
}
END_TEST

/* ---- Mistral ------------------------------------------------------------- */

START_TEST(mistral_v01_legacy) {
  struct strata_chat_template t;
  detect_exact("mistral-7b-instruct-v0.1.jinja", &t, STRATA_CHAT_MISTRAL,
               STRATA_CHAT_V_MISTRAL_LEGACY);
  expect_error(&t, CONV, N(CONV),
               "messages[0].role: 'system' is not supported");
  expect(&t, CONV + 1, 3, "<s>", "</s>",
         "<s>[INST] Hello! [/INST]Hi. How can I help?</s>"
         "[INST] What is 2+2? [/INST]",
         1);
  expect(&t, USER_ONLY, 1, "<s>", "</s>", "<s>[INST] Hello! [/INST]", 1);
  const struct strata_chat_msg aa[] = {MSG("user", "a"), MSG("assistant", "b"),
                                       MSG("assistant", "c")};
  expect_error(&t, aa, 3,
               "messages[2].role: conversation roles must alternate");
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(mistral_v02_v1) {
  struct strata_chat_template t;
  detect_exact("mistral-7b-instruct-v0.2.jinja", &t, STRATA_CHAT_MISTRAL,
               STRATA_CHAT_V_MISTRAL_V1);
  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "<s> [INST] Be brief.\n\nHello! [/INST] Hi. How can I help?</s>"
         " [INST] What is 2+2? [/INST]",
         1);
  expect(&t, USER_ONLY, 1, "<s>", "</s>", "<s> [INST] Hello! [/INST]", 1);
  /* no trimming in v1 */
  expect(&t, SPACED, N(SPACED), "<s>", "</s>",
         "<s> [INST]   Be brief. \n\n Hello!  [/INST]   Hi.\n</s>"
         " [INST] Bye  [/INST]",
         1);
  const struct strata_chat_msg bad[] = {MSG("system", "s"), MSG("user", "a"),
                                        MSG("assistant", "b"),
                                        MSG("assistant", "c")};
  expect_error(&t, bad, 4,
               "messages[3].role: conversation roles must alternate");
  const struct strata_chat_msg sys2[] = {MSG("user", "a"), MSG("system", "s")};
  expect_error(&t, sys2, 2, "messages[1].role: 'system' is not supported");
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(mistral_v03_v3) {
  struct strata_chat_template t;
  detect_exact("mistral-7b-instruct-v0.3.jinja", &t, STRATA_CHAT_MISTRAL,
               STRATA_CHAT_V_MISTRAL_V3);
  /* the system message goes into the LAST message when it is a user one */
  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "<s>[INST] Hello![/INST] Hi. How can I help?</s>"
         "[INST] Be brief.\n\nWhat is 2+2?[/INST]",
         1);
  expect(&t, CONV, 3, "<s>", "</s>",
         "<s>[INST] Hello![/INST] Hi. How can I help?</s>", 1);
  expect(&t, USER_ONLY, 1, "<s>", "</s>", "<s>[INST] Hello![/INST]", 1);
  /* the assistant's answer is trimmed, the rest is not */
  expect(&t, SPACED, N(SPACED), "<s>", "</s>",
         "<s>[INST]  Hello! [/INST] Hi.</s>"
         "[INST]   Be brief. \n\nBye [/INST]",
         1);
  const struct strata_chat_msg tool[] = {
      {"user", "Weather?", 8, NULL},
      {"assistant", "Calling.", 8, NULL},
      {"tool", "{\"t\": 12}", 9, "abcDEF123"},
      {"user", "Thanks", 6, NULL}};
  /* tool results are left out of the alternation check */
  expect(&t, tool, N(tool), "<s>", "</s>",
         "<s>[INST] Weather?[/INST] Calling.</s>"
         "[TOOL_RESULTS] {\"content\": {\"t\": 12}, \"call_id\": \"abcDEF123\"}"
         "[/TOOL_RESULTS]"
         "[INST] Thanks[/INST]",
         1);
  /* without tool_calls (which strata does not take) the assistant's next
   * answer breaks the alternation, as in the real template */
  const struct strata_chat_msg answer[] = {
      tool[0], tool[1], tool[2], {"assistant", "12 degrees.", 11, NULL}};
  expect_error(&t, answer, N(answer),
               "messages[3].role: conversation roles must alternate");
  struct strata_chat_msg badid[N(tool)];
  memcpy(badid, tool, sizeof tool);
  badid[2].tool_call_id = "short";
  expect_error(&t, badid, N(badid), "messages[2].tool_call_id");
  badid[2].tool_call_id = NULL;
  expect_error(&t, badid, N(badid), "messages[2].tool_call_id");
  const struct strata_chat_msg uu[] = {MSG("user", "a"), MSG("assistant", "b"),
                                       MSG("user", "c"), MSG("user", "d")};
  expect_error(&t, uu, 4,
               "messages[3].role: conversation roles must alternate");
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(mistral_nemo_v3_tekken) {
  struct strata_chat_template t;
  detect_exact("mistral-nemo-instruct-2407.jinja", &t, STRATA_CHAT_MISTRAL,
               STRATA_CHAT_V_MISTRAL_V3_TEKKEN);
  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "<s>[INST]Hello![/INST]Hi. How can I help?</s>"
         "[INST]Be brief.\n\nWhat is 2+2?[/INST]",
         1);
  expect(&t, USER_ONLY, 1, "<s>", "</s>", "<s>[INST]Hello![/INST]", 1);
  const struct strata_chat_msg tool[] = {{"user", "W", 1, NULL},
                                         {"tool", "7", 1, "123456789"}};
  expect(&t, tool, 2, "<s>", "</s>",
         "<s>[INST]W[/INST]"
         "[TOOL_RESULTS]{\"content\": 7, \"call_id\": \"123456789\"}"
         "[/TOOL_RESULTS]",
         1);
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(mistral_v7) {
  struct strata_chat_template t;
  detect_exact("mistral-large-instruct-2411.jinja", &t, STRATA_CHAT_MISTRAL,
               STRATA_CHAT_V_MISTRAL_V7);
  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "<s>[SYSTEM_PROMPT] Be brief.[/SYSTEM_PROMPT]"
         "[INST] Hello![/INST] Hi. How can I help?</s>"
         "[INST] What is 2+2?[/INST]",
         1);
  expect(&t, USER_ONLY, 1, "<s>", "</s>", "<s>[INST] Hello![/INST]", 1);
  const struct strata_chat_msg tool[] = {MSG("user", "a"), MSG("tool", "b")};
  expect_error(&t, tool, 2, "messages[1].role: the mistral-v7 template has no");
  strata_chat_template_free(&t);

  ck_assert_int_eq(
      strata_chat_template_by_name("mistral-v7-tekken", &t, NULL, 0), 0);
  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT]"
         "[INST]Hello![/INST]Hi. How can I help?</s>"
         "[INST]What is 2+2?[/INST]",
         1);
  strata_chat_template_free(&t);
}
END_TEST

/* ---- Zephyr -------------------------------------------------------------- */

START_TEST(zephyr) {
  struct strata_chat_template t;
  detect_exact("zephyr-7b-beta.jinja", &t, STRATA_CHAT_ZEPHYR,
               STRATA_CHAT_V_DEFAULT);
  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "<|system|>\nBe brief.</s>\n"
         "<|user|>\nHello!</s>\n"
         "<|assistant|>\nHi. How can I help?</s>\n"
         "<|user|>\nWhat is 2+2?</s>\n"
         "<|assistant|>\n",
         0);
  expect(&t, USER_ONLY, 1, "<s>", "</s>",
         "<|user|>\nHello!</s>\n"
         "<|assistant|>\n",
         0);
  expect_gen(&t, USER_ONLY, 1, "<s>", "</s>", 0, "<|user|>\nHello!</s>\n", 0);
  const struct strata_chat_msg tool[] = {MSG("user", "a"), MSG("tool", "b")};
  expect_error(&t, tool, 2,
               "messages[1].role: the zephyr template has no tool");
  strata_chat_template_free(&t);
}
END_TEST

/* ---- Gemma --------------------------------------------------------------- */

#define GT(role, text) "<start_of_turn>" role "\n" text "<end_of_turn>\n"
#define GTGEN "<start_of_turn>model\n"

START_TEST(gemma2) {
  struct strata_chat_template t;
  detect_exact("gemma-2-9b-it.jinja", &t, STRATA_CHAT_GEMMA,
               STRATA_CHAT_V_GEMMA_NOSYS);
  expect_error(&t, CONV, N(CONV),
               "messages[0].role: 'system' is not supported");
  expect(&t, CONV + 1, 3, "<bos>", "<eos>",
         "<bos>"
         GT("user", "Hello!")
         GT("model", "Hi. How can I help?")
         GT("user", "What is 2+2?")
         GTGEN,
         1);
  expect(&t, USER_ONLY, 1, "<bos>", "<eos>",
         "<bos>" GT("user", "Hello!") GTGEN, 1);
  expect(&t, SPACED + 1, 3, "<bos>", "<eos>",
         "<bos>"
         GT("user", "Hello!")
         GT("model", "Hi.")
         GT("user", "Bye")
         GTGEN,
         1);
  const struct strata_chat_msg aa[] = {MSG("assistant", "a")};
  expect_error(&t, aa, 1,
               "messages[0].role: conversation roles must alternate");
  strata_chat_template_free(&t);

  /* an earlier gemma-7b-it template, without bos_token */
  detect_exact("gemma-7b-it-nobos.jinja", &t, STRATA_CHAT_GEMMA,
               STRATA_CHAT_V_GEMMA_NOSYS);
  expect(&t, USER_ONLY, 1, "<bos>", "<eos>", GT("user", "Hello!") GTGEN, 0);
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(gemma3) {
  struct strata_chat_template t;
  detect_exact("gemma-3-4b-it.jinja", &t, STRATA_CHAT_GEMMA,
               STRATA_CHAT_V_DEFAULT);
  expect(&t, CONV, N(CONV), "<bos>", "<eos>",
         "<bos>"
         GT("user", "Be brief.\n\nHello!")
         GT("model", "Hi. How can I help?")
         GT("user", "What is 2+2?")
         GTGEN,
         1);
  expect(&t, USER_ONLY, 1, "<bos>", "<eos>",
         "<bos>" GT("user", "Hello!") GTGEN, 1);
  /* the system text is not trimmed, the user's is */
  expect(&t, SPACED, N(SPACED), "<bos>", "<eos>",
         "<bos>"
         GT("user", "  Be brief. \n\nHello!")
         GT("model", "Hi.")
         GT("user", "Bye")
         GTGEN,
         1);
  const struct strata_chat_msg sa[] = {MSG("system", "s"),
                                       MSG("assistant", "a")};
  expect_error(&t, sa, 2,
               "messages[1].role: conversation roles must alternate");
  strata_chat_template_free(&t);
}
END_TEST

/* clang-format on */

/* ---- fallback, names, override ------------------------------------------- */

START_TEST(fallback_plain) {
  struct strata_chat_template t;
  char err[256];
  const char *unknown[] = {
      "",
      "{{ messages }}",
      "{% for m in messages %}{{ m.content }}{% endfor %}",
      "<|user|>\n{{ x }}<|assistant|>",
  };
  ck_assert_int_eq(strata_chat_template_detect(NULL, 0, &t, err, sizeof err),
                   0);
  ck_assert(t.fallback && t.family == STRATA_CHAT_PLAIN);
  for (size_t i = 0; i < N(unknown); i++) {
    ck_assert_int_eq(strata_chat_template_detect(unknown[i], strlen(unknown[i]),
                                                 &t, err, sizeof err),
                     0);
    ck_assert_msg(t.fallback && t.family == STRATA_CHAT_PLAIN, "%s",
                  unknown[i]);
  }
  /* Phi-3 shares <|user|>/<|assistant|> with Zephyr but is another format */
  detect_file("phi-3-mini-4k-instruct.jinja", &t);
  ck_assert(t.fallback && t.family == STRATA_CHAT_PLAIN);

  expect(&t, CONV, N(CONV), "<s>", "</s>",
         "System: Be brief.\n\nUser: Hello!\n\nAssistant: Hi. How can I "
         "help?\n\nUser: What is 2+2?\n\nAssistant:",
         0);
  const struct strata_chat_msg tool[] = {MSG("user", "U"), MSG("tool", "T"),
                                         MSG("developer", "D")};
  expect_gen(&t, tool, 3, NULL, NULL, 0, "User: U\n\nTool: T\n\nSystem: D\n\n",
             0);
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(names_and_override) {
  struct strata_chat_template t;
  char err[256];
  static const struct {
    const char *name;
    enum strata_chat_family f;
    const char *canonical;
  } names[] = {
      {"plain", STRATA_CHAT_PLAIN, "plain"},
      {"llama2", STRATA_CHAT_LLAMA2, "llama2"},
      {"llama3", STRATA_CHAT_LLAMA3, "llama3"},
      {"llama3.1", STRATA_CHAT_LLAMA3, "llama3.1"},
      {"chatml", STRATA_CHAT_CHATML, "chatml"},
      {"qwen2", STRATA_CHAT_CHATML, "chatml"},
      {"qwen2.5", STRATA_CHAT_CHATML, "chatml"},
      {"mistral", STRATA_CHAT_MISTRAL, "mistral-v1"},
      {"mistral-legacy", STRATA_CHAT_MISTRAL, "mistral-legacy"},
      {"mistral-v3-tekken", STRATA_CHAT_MISTRAL, "mistral-v3-tekken"},
      {"zephyr", STRATA_CHAT_ZEPHYR, "zephyr"},
      {"gemma", STRATA_CHAT_GEMMA, "gemma"},
      {"gemma2", STRATA_CHAT_GEMMA, "gemma2"},
  };
  for (size_t i = 0; i < N(names); i++) {
    ck_assert_int_eq(
        strata_chat_template_by_name(names[i].name, &t, err, sizeof err), 0);
    ck_assert_int_eq(t.family, names[i].f);
    ck_assert_str_eq(strata_chat_template_name(&t), names[i].canonical);
    ck_assert(!t.fallback && !t.approximate);
    strata_chat_template_free(&t);
  }
  ck_assert_int_eq(strata_chat_template_by_name("llama4", &t, err, sizeof err),
                   STRATA_CHAT_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "unknown chat template 'llama4'"));

  /* an override by name wins over the model's template */
  char *l3 = tmpl_text("meta-llama-3-8b-instruct.jinja");
  ck_assert_int_eq(strata_chat_template_resolve("chatml", l3, strlen(l3), &t,
                                                err, sizeof err),
                   0);
  ck_assert_int_eq(t.family, STRATA_CHAT_CHATML);
  strata_chat_template_free(&t);
  /* no override: the model's template is detected */
  ck_assert_int_eq(
      strata_chat_template_resolve("", l3, strlen(l3), &t, err, sizeof err), 0);
  ck_assert_int_eq(t.family, STRATA_CHAT_LLAMA3);
  strata_chat_template_free(&t);
  ck_assert_int_eq(
      strata_chat_template_resolve(NULL, NULL, 0, &t, err, sizeof err), 0);
  ck_assert(t.fallback);
  strata_chat_template_free(&t);
  free(l3);

  /* "gemma" by name folds the system message in, as Gemma 3 does */
  ck_assert_int_eq(strata_chat_template_by_name("gemma", &t, err, sizeof err),
                   0);
  expect(&t, CONV, 2, "<bos>", NULL,
         "<bos><start_of_turn>user\nBe "
         "brief.\n\nHello!<end_of_turn>\n<start_of_turn>model\n",
         1);
  strata_chat_template_free(&t);

  /* a file: its family is detected */
  char path[4096];
  snprintf(path, sizeof path,
           "%s/tests/data/chat_templates/zephyr-7b-beta.jinja", test_srcdir());
  ck_assert_int_eq(
      strata_chat_template_resolve(path, NULL, 0, &t, err, sizeof err), 0);
  ck_assert_int_eq(t.family, STRATA_CHAT_ZEPHYR);
  strata_chat_template_free(&t);
  /* a file of no known family, or no file at all, is an error */
  snprintf(path, sizeof path,
           "%s/tests/data/chat_templates/phi-3-mini-4k-instruct.jinja",
           test_srcdir());
  ck_assert_int_eq(
      strata_chat_template_resolve(path, NULL, 0, &t, err, sizeof err),
      STRATA_CHAT_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "no known template family"));
  ck_assert_int_eq(strata_chat_template_resolve("/nonexistent/tmpl.jinja", NULL,
                                                0, &t, err, sizeof err),
                   STRATA_CHAT_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "neither a template name nor"));
  strata_chat_template_free(&t);
}
END_TEST

/* The same Llama 3 template in another spelling: double quotes, attribute
 * access, whitespace control and comments do not change the detection. */
START_TEST(respelled_template) {
  const char *text =
      "{#- Llama 3, respelled -#}\n"
      "{%- set loop_messages = messages -%}\n"
      "{%- for message in loop_messages -%}\n"
      "  {%- set content = \"<|start_header_id|>\" + message.role + "
      "\"<|end_header_id|>\\n\\n\" + message.content | trim + \"<|eot_id|>\" "
      "-%}\n"
      "  {%- if loop.index0 == 0 %}{% set content = bos_token + content %}{% "
      "endif -%}\n"
      "  {{- content -}}\n"
      "{%- endfor -%}\n"
      "{%- if add_generation_prompt -%}{{- "
      "\"<|start_header_id|>assistant<|end_header_id|>\\n\\n\" -}}{%- endif "
      "-%}\n";
  struct strata_chat_template t;
  char err[256];
  ck_assert_int_eq(
      strata_chat_template_detect(text, strlen(text), &t, err, sizeof err), 0);
  ck_assert_int_eq(t.family, STRATA_CHAT_LLAMA3);
  ck_assert(!t.approximate && !t.fallback);
  strata_chat_template_free(&t);

  /* A ChatML template recognised by its markers only is flagged. */
  const char *qwen3ish =
      "{%- for message in messages %}{{- '<|im_start|>' + "
      "message.role + '\\n' + content }}<think>{%- endfor %}";
  ck_assert_int_eq(strata_chat_template_detect(qwen3ish, strlen(qwen3ish), &t,
                                               err, sizeof err),
                   0);
  ck_assert_int_eq(t.family, STRATA_CHAT_CHATML);
  ck_assert(t.approximate && !t.fallback);
  ck_assert_ptr_null(t.default_system);
  strata_chat_template_free(&t);
}
END_TEST

/* ---- roles and hostile input --------------------------------------------- */

START_TEST(bad_messages) {
  struct strata_chat_template t;
  char err[256], *out;
  ck_assert_int_eq(strata_chat_template_by_name("chatml", &t, err, sizeof err),
                   0);
  expect_error(&t, CONV, 0, "messages: at least one message");

  const struct strata_chat_msg fn[] = {MSG("user", "a"), MSG("function", "b")};
  expect_error(&t, fn, 2, "messages[1].role: unknown role 'function'");
  const struct strata_chat_msg upper[] = {MSG("User", "a")};
  expect_error(&t, upper, 1, "messages[0].role: unknown role 'User'");
  const struct strata_chat_msg norole[] = {{NULL, "a", 1, NULL}};
  expect_error(&t, norole, 1, "messages[0].role: missing");
  /* an unknown role is quoted short and printable */
  char longrole[200];
  memset(longrole, 'x', sizeof longrole - 1);
  longrole[sizeof longrole - 1] = '\0';
  longrole[3] = '\n';
  const struct strata_chat_msg lr[] = {{longrole, "a", 1, NULL}};
  expect_error(&t, lr, 1, "unknown role 'xxx?xxxx");
  ck_assert_int_eq(strata_chat_apply(&t, lr, 1, NULL, NULL, 1, &out, NULL, NULL,
                                     err, sizeof err),
                   STRATA_CHAT_EINVAL);
  ck_assert(strlen(err) < 160);

  /* content: NUL bytes and invalid UTF-8 are errors naming the byte */
  const struct strata_chat_msg nul[] = {MSG("user", "ok"),
                                        {"user", "a\0b", 3, NULL}};
  expect_error(&t, nul, 2, "messages[1].content: contains a NUL byte");
  static const char *const bad_utf8[] = {
      "ab\xc0\x80",         /* overlong */
      "ab\xed\xa0\x80",     /* surrogate */
      "ab\xe2\x82",         /* truncated */
      "ab\xf5\x80\x80\x80", /* past U+10FFFF */
      "ab\x80",             /* lone continuation */
      "ab\xf0\x8f\xbf\xbf", /* overlong 4-byte */
  };
  for (size_t i = 0; i < N(bad_utf8); i++) {
    const struct strata_chat_msg m[] = {
        {"user", bad_utf8[i], strlen(bad_utf8[i]), NULL}};
    expect_error(&t, m, 1, "messages[0].content: invalid UTF-8 at byte 2");
  }
  const struct strata_chat_msg good[] = {
      MSG("user", "\xf0\x9f\x98\x80 \xe2\x82\xac \xf4\x8f\xbf\xbf")};
  expect_gen(&t, good, 1, NULL, NULL, 0,
             "<|im_start|>user\n\xf0\x9f\x98\x80 \xe2\x82\xac "
             "\xf4\x8f\xbf\xbf<|im_end|>\n",
             0);
  const struct strata_chat_msg nullc[] = {{"user", NULL, 5, NULL}};
  expect_error(&t, nullc, 1, "messages[0].content: NULL with length 5");
  /* empty content is fine */
  const struct strata_chat_msg empty[] = {{"user", NULL, 0, NULL},
                                          MSG("assistant", "")};
  expect_gen(
      &t, empty, 2, NULL, NULL, 0,
      "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n", 0);
  strata_chat_template_free(&t);
}
END_TEST

START_TEST(many_and_huge) {
  struct strata_chat_template t;
  char err[256], *out;
  size_t len;
  /* thousands of messages: linear, and exactly the expected length */
  const size_t n = 20000;
  struct strata_chat_msg *m = calloc(n, sizeof *m);
  for (size_t i = 0; i < n; i++)
    m[i] =
        (struct strata_chat_msg){i % 2 ? "assistant" : "user", "hi", 2, NULL};
  ck_assert_int_eq(strata_chat_template_by_name("llama2", &t, err, sizeof err),
                   0);
  ck_assert_int_eq(strata_chat_apply(&t, m, n, "<s>", "</s>", 1, &out, &len,
                                     NULL, err, sizeof err),
                   0);
  /* "<s>[INST] hi [/INST]" + " hi </s>" per pair */
  ck_assert_uint_eq(len, (n / 2) * (20 + 8));
  free(out);
  strata_chat_template_free(&t);
  ck_assert_int_eq(strata_chat_template_by_name("chatml", &t, err, sizeof err),
                   0);
  ck_assert_int_eq(strata_chat_apply(&t, m, n, NULL, NULL, 1, &out, &len, NULL,
                                     err, sizeof err),
                   0);
  ck_assert_uint_eq(len, (n / 2) * (30 + 35) + 22);
  free(out);
  free(m);

  /* one huge message */
  const size_t big = 16u << 20;
  char *text = malloc(big);
  memset(text, 'a', big);
  text[0] = ' ';
  text[big - 1] = '\n';
  struct strata_chat_msg one = {"user", text, big, NULL};
  ck_assert_int_eq(strata_chat_apply(&t, &one, 1, NULL, NULL, 1, &out, &len,
                                     NULL, err, sizeof err),
                   0);
  ck_assert_uint_eq(len, big + 17 + 11 + 22);
  free(out);
  strata_chat_template_free(&t);
  ck_assert_int_eq(strata_chat_template_by_name("gemma", &t, err, sizeof err),
                   0);
  ck_assert_int_eq(strata_chat_apply(&t, &one, 1, "<bos>", NULL, 1, &out, &len,
                                     NULL, err, sizeof err),
                   0);
  ck_assert_uint_eq(len, 5 + 20 + (big - 2) + 14 + 21);
  free(out);
  strata_chat_template_free(&t);
  free(text);
}
END_TEST

/* Template texts are model metadata, so detection must survive any bytes. */
START_TEST(hostile_templates) {
  static const char *const texts[] = {
      "{{",
      "{%",
      "{#",
      "{{ '",
      "{{ \"abc",
      "{{ x['",
      "{{ x[ 'a' ",
      "{{ x['a'] }",
      "{% - %}",
      "{{ '\\",
      "-%}",
      "'<|im_start|>system\n",
      "{{'<|im_start|>system\nX",
      "{{ '<|im_start|>system\\nY<|im_end|>\\n' }}<|im_start|>",
      "<|start_header_id|><|end_header_id|>Cutting Knowledge Date: "
      "{%set date_string='0123456789012345678901234567890123456789'%}",
      "<|start_header_id|><|end_header_id|>Cutting Knowledge Date: "
      "{% set date_string = '",
  };
  struct strata_chat_template t;
  char err[256];
  for (size_t i = 0; i < N(texts); i++) {
    ck_assert_int_eq(strata_chat_template_detect(texts[i], strlen(texts[i]), &t,
                                                 err, sizeof err),
                     0);
    strata_chat_template_free(&t);
  }
  /* the embedded default system prompt is found even in a short template */
  const char *q = texts[13];
  ck_assert_int_eq(
      strata_chat_template_detect(q, strlen(q), &t, err, sizeof err), 0);
  ck_assert_str_eq(t.default_system, "Y");
  strata_chat_template_free(&t);
  /* a date too long for the buffer keeps the default */
  q = texts[14];
  ck_assert_int_eq(
      strata_chat_template_detect(q, strlen(q), &t, err, sizeof err), 0);
  ck_assert_str_eq(t.date_string, "26 Jul 2024");
  strata_chat_template_free(&t);
  /* random bytes */
  unsigned s = 12345;
  char buf[512];
  for (int round = 0; round < 2000; round++) {
    size_t n = (size_t)(round % 500) + 1;
    for (size_t i = 0; i < n; i++) {
      s = s * 1103515245u + 12345u;
      static const char alphabet[] = "{}%#-+'\"[]\\ \nab<|>_.";
      buf[i] = (s >> 16) % 3 ? alphabet[(s >> 8) % (sizeof alphabet - 1)]
                             : (char)(s >> 8);
    }
    ck_assert_int_eq(strata_chat_template_detect(buf, n, &t, err, sizeof err),
                     0);
    strata_chat_template_free(&t);
  }
}
END_TEST

/* ---- OpenAI JSON messages ------------------------------------------------ */

static json_t *load(const char *text) {
  json_error_t je;
  json_t *j = json_loads(text, JSON_ALLOW_NUL, &je);
  ck_assert_msg(j != NULL, "%s", je.text);
  return j;
}

static void json_error(const char *text, const char *want) {
  json_t *j = load(text);
  struct strata_chat_msg *m = (struct strata_chat_msg *)1;
  size_t n = 99;
  char err[256] = "";
  ck_assert_int_eq(strata_chat_msgs_from_json(j, &m, &n, err, sizeof err),
                   STRATA_CHAT_EINVAL);
  ck_assert_ptr_null(m);
  ck_assert_uint_eq(n, 0);
  ck_assert_msg(strstr(err, want), "error [%s] lacks [%s]", err, want);
  json_decref(j);
}

START_TEST(from_json) {
  json_t *j = load(
      "[{\"role\": \"developer\", \"content\": \"Be brief.\"},"
      " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": "
      "\"Hello\"}, {\"type\": \"text\", \"text\": \"there!\"}]},"
      " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": []},"
      " {\"role\": \"tool\", \"content\": \"42\", \"tool_call_id\": \"c1\"},"
      " {\"role\": \"user\", \"content\": [], \"name\": \"bob\"}]");
  struct strata_chat_msg *m;
  size_t n;
  char err[256];
  ck_assert_int_eq(strata_chat_msgs_from_json(j, &m, &n, err, sizeof err), 0);
  ck_assert_uint_eq(n, 5);
  ck_assert_str_eq(m[0].role, "developer");
  ck_assert_uint_eq(m[1].content_len, 12);
  ck_assert(memcmp(m[1].content, "Hello\nthere!", 12) == 0);
  ck_assert_uint_eq(m[2].content_len, 0);
  ck_assert_str_eq(m[3].tool_call_id, "c1");
  ck_assert_uint_eq(m[4].content_len, 0);

  struct strata_chat_template t;
  ck_assert_int_eq(strata_chat_template_by_name("chatml", &t, err, sizeof err),
                   0);
  expect(&t, m, n, NULL, NULL,
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello\n"
         "there!<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>"
         "tool\n42<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>"
         "assistant\n",
         0);
  free(m);
  json_decref(j);

  /* a NUL inside content passes the JSON step and is refused by apply */
  j = load("[{\"role\": \"user\", \"content\": \"a\\u0000b\"}]");
  ck_assert_int_eq(strata_chat_msgs_from_json(j, &m, &n, err, sizeof err), 0);
  ck_assert_uint_eq(m[0].content_len, 3);
  expect_error(&t, m, n, "messages[0].content: contains a NUL byte");
  free(m);
  json_decref(j);
  strata_chat_template_free(&t);

  json_error("{\"role\": \"user\"}", "messages: must be an array");
  json_error("[]", "messages: at least one message");
  json_error("[1]", "messages[0]: must be an object");
  json_error("[{\"content\": \"a\"}]", "messages[0].role: missing");
  json_error("[{\"role\": 7, \"content\": \"a\"}]",
             "messages[0].role: must be a string");
  json_error("[{\"role\": \"user\\u0000x\", \"content\": \"a\"}]",
             "messages[0].role: contains a NUL byte");
  json_error("[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\"}]",
             "messages[1].content: missing");
  json_error("[{\"role\": \"system\", \"content\": null}]",
             "messages[0].content: missing");
  json_error("[{\"role\": \"user\", \"content\": 5}]",
             "messages[0].content: must be a string or an array");
  json_error("[{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
             "\"image_url\": {\"url\": \"x\"}}]}]",
             "messages[0].content[0].type: 'image_url' is not supported");
  json_error("[{\"role\": \"user\", \"content\": [\"text\"]}]",
             "messages[0].content[0]: must be an object");
  json_error("[{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]",
             "messages[0].content[0].text: must be a string");
  json_error("[{\"role\": \"assistant\", \"content\": null, \"tool_calls\": "
             "[{\"id\": \"x\"}]}]",
             "messages[0].tool_calls: tool calls in the history are not "
             "supported");
  json_error("[{\"role\": \"tool\", \"content\": \"a\", \"tool_call_id\": 3}]",
             "messages[0].tool_call_id: must be a string");
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("chat_template");
  TCase *tc = tcase_create("families");
  tcase_add_test(tc, llama2);
  tcase_add_test(tc, llama3);
  tcase_add_test(tc, llama31);
  tcase_add_test(tc, qwen2);
  tcase_add_test(tc, qwen25);
  tcase_add_test(tc, qwen_gguf);
  tcase_add_test(tc, mistral_v01_legacy);
  tcase_add_test(tc, mistral_v02_v1);
  tcase_add_test(tc, mistral_v03_v3);
  tcase_add_test(tc, mistral_nemo_v3_tekken);
  tcase_add_test(tc, mistral_v7);
  tcase_add_test(tc, zephyr);
  tcase_add_test(tc, gemma2);
  tcase_add_test(tc, gemma3);
  suite_add_tcase(s, tc);
  tc = tcase_create("detection");
  tcase_add_test(tc, fallback_plain);
  tcase_add_test(tc, names_and_override);
  tcase_add_test(tc, respelled_template);
  tcase_add_test(tc, hostile_templates);
  suite_add_tcase(s, tc);
  tc = tcase_create("input");
  tcase_add_test(tc, bad_messages);
  tcase_add_test(tc, many_and_huge);
  tcase_add_test(tc, from_json);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  return test_run_suite(suite());
}
