#include "config.h"

#include "chat_template.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"
#include "util.h"

/* Why hand-written renderers and not a Jinja engine: see chat_template.h.
 * Each render_* function below follows one real template statement by
 * statement; the comments quote the Jinja it reproduces. */

/* ---- growing output buffer ----------------------------------------------- */

/* Geometric growth keeps building the prompt linear in its size however
 * many messages it has; an allocation failure is remembered and reported
 * once. */
struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
  if (b->oom || n == 0) return;
  if (n > SIZE_MAX - 1 - b->len) {
    b->oom = 1;
    return;
  }
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) {
      if (cap > SIZE_MAX / 2) {
        cap = b->len + n + 1;
        break;
      }
      cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s) {
  sb_put(b, s, strlen(s));
}

/* ---- text helpers -------------------------------------------------------- */

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
 * Returns the offset of the first bad byte, or n when all is valid. */
static size_t utf8_check(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (need > n - i - 1) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k <= need; k++)
      if ((s[i + k] & 0xC0) != 0x80) return i;
    i += need + 1;
  }
  return n;
}

/* Python's str.isspace(), which Jinja's trim filter and str.strip() use:
 * \t\n\v\f\r, \x1c-\x1f, space, U+0085, U+00A0, U+1680, U+2000-U+200A,
 * U+2028, U+2029, U+202F, U+205F, U+3000. Returns the byte length of the
 * whitespace character at s[0..n), or 0. Input is valid UTF-8. */
static size_t ws_at(const unsigned char *s, size_t n) {
  if (n == 0) return 0;
  unsigned c = s[0];
  if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) return 1;
  if (c == 0xC2 && n >= 2) return (s[1] == 0x85 || s[1] == 0xA0) ? 2 : 0;
  if (n < 3) return 0;
  if (c == 0xE1) return (s[1] == 0x9A && s[2] == 0x80) ? 3 : 0;
  if (c == 0xE2 && s[1] == 0x80)
    return ((s[2] >= 0x80 && s[2] <= 0x8A) || s[2] == 0xA8 || s[2] == 0xA9 ||
            s[2] == 0xAF)
               ? 3
               : 0;
  if (c == 0xE2 && s[1] == 0x81) return s[2] == 0x9F ? 3 : 0;
  if (c == 0xE3) return (s[1] == 0x80 && s[2] == 0x80) ? 3 : 0;
  return 0;
}

/* The whitespace character that ends s[0..n), as ws_at. */
static size_t ws_before(const unsigned char *s, size_t n) {
  size_t start = n;
  while (start > 0 && n - start < 4) {
    start--;
    if ((s[start] & 0xC0) != 0x80) break;
  }
  if (start == n) return 0;
  size_t w = ws_at(s + start, n - start);
  return w == n - start ? w : 0;
}

struct piece {
  const char *s;
  size_t n;
};

/* Appends the concatenation of p[0..np) with Python's strip() applied to the
 * whole, without building the concatenation first: Llama 2 strips
 * '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content as one string, so an
 * all-blank content also eats the newlines after <</SYS>>. */
static void sb_put_stripped(struct sbuf *b, const struct piece *p, size_t np) {
  size_t si = np, so = 0;
  for (size_t i = 0; i < np && si == np; i++) {
    const unsigned char *s = (const unsigned char *)p[i].s;
    size_t off = 0, w;
    while (off < p[i].n && (w = ws_at(s + off, p[i].n - off)))
      off += w;
    if (off < p[i].n) {
      si = i;
      so = off;
    }
  }
  if (si == np) return; /* all whitespace */
  size_t ei = si, eo = 0;
  for (size_t j = np; j-- > si;) {
    const unsigned char *s = (const unsigned char *)p[j].s;
    size_t end = p[j].n, w;
    while (end > 0 && (w = ws_before(s, end)))
      end -= w;
    if (end > 0) {
      ei = j;
      eo = end;
      break;
    }
  }
  if (si == ei) {
    sb_put(b, p[si].s + so, eo - so);
    return;
  }
  sb_put(b, p[si].s + so, p[si].n - so);
  for (size_t k = si + 1; k < ei; k++)
    sb_put(b, p[k].s, p[k].n);
  sb_put(b, p[ei].s, eo);
}

static void sb_put_trim(struct sbuf *b, const char *s, size_t n) {
  struct piece p = {s, n};
  sb_put_stripped(b, &p, 1);
}

/* A JSON string as Python's json.dumps(ensure_ascii=False) writes it, which
 * is what the tojson filter of transformers' template environment does. */
static void sb_put_json_string(struct sbuf *b, const char *s, size_t n) {
  sb_put(b, "\"", 1);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char u[8];
    switch (c) {
    case '"':
      esc = "\\\"";
      break;
    case '\\':
      esc = "\\\\";
      break;
    case '\n':
      esc = "\\n";
      break;
    case '\r':
      esc = "\\r";
      break;
    case '\t':
      esc = "\\t";
      break;
    case '\b':
      esc = "\\b";
      break;
    case '\f':
      esc = "\\f";
      break;
    default:
      if (c < 0x20) {
        snprintf(u, sizeof u, "\\u%04x", c);
        esc = u;
      }
    }
    if (!esc) continue;
    sb_put(b, s + run, i - run);
    sb_puts(b, esc);
    run = i + 1;
  }
  sb_put(b, s + run, n - run);
  sb_put(b, "\"", 1);
}

/* A user-supplied string for an error message: at most 32 bytes, printable
 * ASCII only, so that the message stays one short line. */
static void err_quote(char *dst, size_t dn, const char *s) {
  size_t k = 0, i = 0;
  for (; s[i] && i < 32 && k + 1 < dn; i++)
    dst[k++] = (s[i] >= 0x20 && s[i] < 0x7F) ? s[i] : '?';
  if (s[i] && k + 4 < dn) {
    memcpy(dst + k, "...", 3);
    k += 3;
  }
  dst[k] = '\0';
}

/* ---- template names ------------------------------------------------------ */

static const struct {
  const char *name;
  enum strata_chat_family family;
  enum strata_chat_variant variant;
  unsigned flags;
  const char *default_system;
} known_names[] = {
    {"plain", STRATA_CHAT_PLAIN, STRATA_CHAT_V_DEFAULT, 0, NULL},
    {"llama2", STRATA_CHAT_LLAMA2, STRATA_CHAT_V_DEFAULT,
     STRATA_CHAT_F_BOS | STRATA_CHAT_F_LLAMA2_EOS_SPACE, NULL},
    {"llama3", STRATA_CHAT_LLAMA3, STRATA_CHAT_V_DEFAULT, STRATA_CHAT_F_BOS,
     NULL},
    {"llama3.1", STRATA_CHAT_LLAMA3, STRATA_CHAT_V_LLAMA31, STRATA_CHAT_F_BOS,
     NULL},
    {"chatml", STRATA_CHAT_CHATML, STRATA_CHAT_V_DEFAULT, 0, NULL},
    {"qwen2", STRATA_CHAT_CHATML, STRATA_CHAT_V_DEFAULT, 0,
     "You are a helpful assistant."},
    {"qwen2.5", STRATA_CHAT_CHATML, STRATA_CHAT_V_DEFAULT,
     STRATA_CHAT_F_TOOL_RESPONSE,
     "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
    {"mistral", STRATA_CHAT_MISTRAL, STRATA_CHAT_V_MISTRAL_V1,
     STRATA_CHAT_F_BOS, NULL},
    {"mistral-legacy", STRATA_CHAT_MISTRAL, STRATA_CHAT_V_MISTRAL_LEGACY,
     STRATA_CHAT_F_BOS, NULL},
    {"mistral-v1", STRATA_CHAT_MISTRAL, STRATA_CHAT_V_MISTRAL_V1,
     STRATA_CHAT_F_BOS, NULL},
    {"mistral-v3", STRATA_CHAT_MISTRAL, STRATA_CHAT_V_MISTRAL_V3,
     STRATA_CHAT_F_BOS, NULL},
    {"mistral-v3-tekken", STRATA_CHAT_MISTRAL, STRATA_CHAT_V_MISTRAL_V3_TEKKEN,
     STRATA_CHAT_F_BOS, NULL},
    {"mistral-v7", STRATA_CHAT_MISTRAL, STRATA_CHAT_V_MISTRAL_V7,
     STRATA_CHAT_F_BOS, NULL},
    {"mistral-v7-tekken", STRATA_CHAT_MISTRAL, STRATA_CHAT_V_MISTRAL_V7_TEKKEN,
     STRATA_CHAT_F_BOS, NULL},
    {"zephyr", STRATA_CHAT_ZEPHYR, STRATA_CHAT_V_DEFAULT, 0, NULL},
    {"gemma", STRATA_CHAT_GEMMA, STRATA_CHAT_V_DEFAULT, STRATA_CHAT_F_BOS,
     NULL},
    {"gemma2", STRATA_CHAT_GEMMA, STRATA_CHAT_V_GEMMA_NOSYS, STRATA_CHAT_F_BOS,
     NULL},
    {"gemma3", STRATA_CHAT_GEMMA, STRATA_CHAT_V_DEFAULT, STRATA_CHAT_F_BOS,
     NULL},
};

const char *strata_chat_family_name(enum strata_chat_family f) {
  switch (f) {
  case STRATA_CHAT_PLAIN:
    return "plain";
  case STRATA_CHAT_LLAMA2:
    return "llama2";
  case STRATA_CHAT_LLAMA3:
    return "llama3";
  case STRATA_CHAT_CHATML:
    return "chatml";
  case STRATA_CHAT_MISTRAL:
    return "mistral";
  case STRATA_CHAT_ZEPHYR:
    return "zephyr";
  case STRATA_CHAT_GEMMA:
    return "gemma";
  }
  return "?";
}

const char *strata_chat_template_name(const struct strata_chat_template *t) {
  switch (t->variant) {
  case STRATA_CHAT_V_DEFAULT:
    break;
  case STRATA_CHAT_V_LLAMA31:
    return "llama3.1";
  case STRATA_CHAT_V_MISTRAL_LEGACY:
    return "mistral-legacy";
  case STRATA_CHAT_V_MISTRAL_V1:
    return "mistral-v1";
  case STRATA_CHAT_V_MISTRAL_V3:
    return "mistral-v3";
  case STRATA_CHAT_V_MISTRAL_V3_TEKKEN:
    return "mistral-v3-tekken";
  case STRATA_CHAT_V_MISTRAL_V7:
    return "mistral-v7";
  case STRATA_CHAT_V_MISTRAL_V7_TEKKEN:
    return "mistral-v7-tekken";
  case STRATA_CHAT_V_GEMMA_NOSYS:
    return "gemma2";
  }
  return strata_chat_family_name(t->family);
}

void strata_chat_template_free(struct strata_chat_template *t) {
  if (!t) return;
  free(t->default_system);
  memset(t, 0, sizeof *t);
}

static void tmpl_init(struct strata_chat_template *t, enum strata_chat_family f,
                      enum strata_chat_variant v, unsigned flags) {
  memset(t, 0, sizeof *t);
  t->family = f;
  t->variant = v;
  t->flags = flags;
  if (v == STRATA_CHAT_V_LLAMA31) strcpy(t->date_string, "26 Jul 2024");
}

int strata_chat_template_by_name(const char *name,
                                 struct strata_chat_template *out, char *err,
                                 size_t errlen) {
  for (size_t i = 0; name && i < STRATA_ARRAY_LEN(known_names); i++) {
    if (strcmp(name, known_names[i].name) != 0) continue;
    tmpl_init(out, known_names[i].family, known_names[i].variant,
              known_names[i].flags);
    if (known_names[i].default_system) {
      out->default_system = strata_strdup(known_names[i].default_system);
      if (!out->default_system) {
        strata_errf(err, errlen, "chat template: out of memory");
        return STRATA_CHAT_ENOMEM;
      }
    }
    return 0;
  }
  char q[48];
  err_quote(q, sizeof q, name ? name : "");
  strata_errf(err, errlen,
              "unknown chat template '%s' (known: plain, llama2, llama3, "
              "llama3.1, chatml, qwen2, qwen2.5, mistral, mistral-legacy, "
              "mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7, "
              "mistral-v7-tekken, zephyr, gemma, gemma2, gemma3)",
              q);
  return STRATA_CHAT_EINVAL;
}

/* ---- detection ----------------------------------------------------------- */

/* Detection looks for marker strings, and the same template is written in
 * many spellings: message['content'] or message.content, ' or " quotes,
 * "\n" escapes or raw newlines, {%- -%} whitespace control, any spacing.
 * canon() rewrites the template into one spelling so that the markers below
 * can be exact strings:
 *   - inside {{ }} and {% %}: whitespace outside literals and the -/+
 *     whitespace-control marks are dropped, x['key'] becomes x.key, and every
 *     string literal becomes '...' holding its decoded text (\n is a newline)
 *     with \ and ' escaped by a backslash;
 *   - {# comments #} are dropped;
 *   - text outside tags is kept as is.
 * So  {{- '[INST] ' + message["content"] | trim }}  reads
 *     {{'[INST] '+message.content|trim}}  */

static void canon_put(char *o, size_t *k, char c) {
  if (c == '\\' || c == '\'') o[(*k)++] = '\\';
  o[(*k)++] = c;
}

/* Decodes the literal that starts (at its quote) at t[i]; returns the index
 * past it. Escapes follow Python's, which Jinja uses. */
static size_t canon_literal(const char *t, size_t len, size_t i, char *o,
                            size_t *k) {
  char q = t[i++];
  while (i < len && t[i] != q) {
    if (t[i] == '\\' && i + 1 < len) {
      char e = t[i + 1];
      i += 2;
      switch (e) {
      case 'n':
        o[(*k)++] = '\n';
        break;
      case 't':
        o[(*k)++] = '\t';
        break;
      case 'r':
        o[(*k)++] = '\r';
        break;
      case '\\':
      case '\'':
      case '"':
        canon_put(o, k, e);
        break;
      default: /* Python keeps unknown escapes as written */
        canon_put(o, k, '\\');
        canon_put(o, k, e);
      }
      continue;
    }
    canon_put(o, k, t[i++]);
  }
  return i < len ? i + 1 : len;
}

static int is_ident(const char *s, size_t n) {
  if (n == 0 || !((s[0] >= 'a' && s[0] <= 'z') ||
                  (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
    return 0;
  for (size_t i = 1; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
          (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
      return 0;
  return 1;
}

static int is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static char *canon(const char *t, size_t len) {
  /* Each input byte yields at most two output bytes (an unescaped ' inside
   * a "..." literal); tags and subscripts only shrink. */
  if (len > (SIZE_MAX - 16) / 2) return NULL;
  char *o = malloc(2 * len + 16);
  if (!o) return NULL;
  size_t i = 0, k = 0;
  while (i < len) {
    if (!(t[i] == '{' && i + 1 < len &&
          (t[i + 1] == '{' || t[i + 1] == '%' || t[i + 1] == '#'))) {
      o[k++] = t[i++];
      continue;
    }
    char kind = t[i + 1];
    i += 2;
    if (kind == '#') {
      while (i + 1 < len && !(t[i] == '#' && t[i + 1] == '}'))
        i++;
      i = i + 1 < len ? i + 2 : len;
      continue;
    }
    char close = kind == '{' ? '}' : '%';
    o[k++] = '{';
    o[k++] = kind;
    if (i < len && (t[i] == '-' || t[i] == '+')) i++;
    while (i < len) {
      char c = t[i];
      if (is_blank(c)) {
        i++;
      } else if ((c == '-' || c == '+') && i + 2 < len && t[i + 1] == close &&
                 t[i + 2] == '}') {
        i++;
      } else if (c == close && i + 1 < len && t[i + 1] == '}') {
        o[k++] = close;
        o[k++] = '}';
        i += 2;
        break;
      } else if (c == '\'' || c == '"') {
        o[k++] = '\'';
        i = canon_literal(t, len, i, o, &k);
        o[k++] = '\'';
      } else if (c == '[') {
        size_t j = i + 1;
        while (j < len && is_blank(t[j]))
          j++;
        size_t k0 = k;
        if (j < len && (t[j] == '\'' || t[j] == '"')) {
          o[k++] = '.';
          size_t m = canon_literal(t, len, j, o, &k);
          while (m < len && is_blank(t[m]))
            m++;
          if (m < len && t[m] == ']' && is_ident(o + k0 + 1, k - k0 - 1)) {
            i = m + 1;
            continue;
          }
        }
        k = k0; /* not x['ident']: keep the bracket, re-read what follows */
        o[k++] = '[';
        i++;
      } else {
        o[k++] = c;
        i++;
      }
    }
  }
  o[k] = '\0';
  return o;
}

static int has(const char *c, const char *marker) {
  return strstr(c, marker) != NULL;
}

/* The text of the canonical literal whose content starts at p (after the
 * opening quote), unescaped; *end is set past the closing quote. */
static char *lit_text(const char *p, const char **end) {
  size_t n = 0;
  const char *q = p;
  while (*q && *q != '\'') {
    if (*q == '\\' && q[1]) q++;
    q++;
    n++;
  }
  char *s = malloc(n + 1);
  if (!s) return NULL;
  size_t k = 0;
  for (q = p; *q && *q != '\'';) {
    if (*q == '\\' && q[1]) q++;
    s[k++] = *q++;
  }
  s[k] = '\0';
  if (end) *end = *q ? q + 1 : q;
  return s;
}

/* ChatML templates that insert a default system prompt (Qwen) write it as
 * one literal: '<|im_start|>system\n' TEXT '<|im_end|>\n'. Returns 1 and the
 * TEXT, 0 when there is none, -1 when out of memory. */
static int chatml_default_system(const char *c, char **out) {
  static const char head[] = "'<|im_start|>system\n";
  static const char tail[] = "<|im_end|>\n";
  const size_t tn = sizeof tail - 1;
  for (const char *p = strstr(c, head); p; p = strstr(p + 1, head)) {
    char *s = lit_text(p + sizeof head - 1, NULL);
    if (!s) return -1;
    size_t n = strlen(s);
    if (n > tn && strcmp(s + n - tn, tail) == 0 && !strstr(s, "<|im_start|>")) {
      s[n - tn] = '\0';
      *out = s;
      return 1;
    }
    free(s);
  }
  return 0;
}

/* Llama 3.1: {%- set date_string = "26 Jul 2024" %}, or strftime_now (3.2+)
 * meaning today, which HF and vLLM provide. */
static void llama31_date(const char *c, char *date, size_t n) {
  if (has(c, "strftime_now")) {
    date[0] = '\0';
    return;
  }
  snprintf(date, n, "%s", "26 Jul 2024");
  const char *p = strstr(c, "setdate_string='");
  if (!p) return;
  char *s = lit_text(p + strlen("setdate_string='"), NULL);
  if (s && strlen(s) < n) snprintf(date, n, "%s", s);
  free(s);
}

static void detect_canon(const char *c, struct strata_chat_template *t,
                         int *oom) {
  unsigned bos = has(c, "bos_token") ? STRATA_CHAT_F_BOS : 0;

  if (has(c, "<|start_header_id|>") && has(c, "<|end_header_id|>")) {
    int llama31 = has(c, "Cutting Knowledge Date:");
    tmpl_init(t, STRATA_CHAT_LLAMA3,
              llama31 ? STRATA_CHAT_V_LLAMA31 : STRATA_CHAT_V_DEFAULT,
              bos || has(c, "<|begin_of_text|>") ? STRATA_CHAT_F_BOS : 0);
    int turn = has(c, "'<|start_header_id|>'+message.role+'<|end_header_id|>"
                      "\n\n'+message.content|trim+'<|eot_id|>'") &&
               has(c, "'<|start_header_id|>assistant<|end_header_id|>\n\n'");
    if (llama31) {
      llama31_date(c, t->date_string, sizeof t->date_string);
      t->approximate = !(turn && has(c, "'Today Date: '+date_string+'\n\n'") &&
                         has(c, "'<|start_header_id|>ipython<|end_header_id|>"
                                "\n\n'"));
    } else {
      t->approximate = !(turn && has(c, "bos_token+content"));
    }
    return;
  }

  /* Phi-4 and SmolVLM reuse <|im_start|> in formats that are not ChatML. */
  if (has(c, "<|im_start|>") && !has(c, "<|im_sep|>") &&
      !has(c, "<end_of_utterance>")) {
    tmpl_init(t, STRATA_CHAT_CHATML, STRATA_CHAT_V_DEFAULT, bos);
    if (has(c, "<tool_response>")) t->flags |= STRATA_CHAT_F_TOOL_RESPONSE;
    if (chatml_default_system(c, &t->default_system) < 0) *oom = 1;
    /* Reasoning templates (Qwen3, QwQ) also rewrite the history's <think>
     * blocks, and some (InternLM2) end with EOS after an assistant turn:
     * neither is copied. */
    t->approximate =
        !has(c,
             "'<|im_start|>'+message.role+'\n'+message.content+'<|im_end|>") ||
        !has(c, "'<|im_start|>assistant\n'") || has(c, "<think>") ||
        has(c, "eos_token");
    return;
  }

  if (has(c, "<start_of_turn>")) {
    int gemma3 = has(c, "first_user_prefix");
    tmpl_init(t, STRATA_CHAT_GEMMA,
              gemma3 ? STRATA_CHAT_V_DEFAULT : STRATA_CHAT_V_GEMMA_NOSYS, bos);
    int gen = has(c, "'<start_of_turn>model\n'");
    if (gemma3)
      t->approximate =
          !(gen &&
            has(c, "'<start_of_turn>'+role+'\n'+(first_user_prefixif"
                   "loop.firstelse'')") &&
            has(c, "message.content|trim"));
    else
      t->approximate =
          !(gen && has(c, "'<start_of_turn>'+role+'\n'+"
                          "message.content|trim+'<end_of_turn>\n'"));
    return;
  }

  if (has(c, "[INST]") && has(c, "<<SYS>>")) {
    tmpl_init(t, STRATA_CHAT_LLAMA2, STRATA_CHAT_V_DEFAULT,
              STRATA_CHAT_F_BOS | STRATA_CHAT_F_LLAMA2_EOS_SPACE);
    int space = has(c, "'+content.strip()+' '+eos_token");
    int nospace = has(c, "' '+content.strip()+eos_token");
    if (nospace && !space) t->flags &= ~STRATA_CHAT_F_LLAMA2_EOS_SPACE;
    t->approximate = !(
        (space || nospace) &&
        has(c, "bos_token+'[INST] '+content.strip()+' [/INST]'") &&
        has(c, "'<<SYS>>\n'+system_message+'\n<</SYS>>\n\n'+message.content"));
    return;
  }

  if (has(c, "[INST]")) {
    enum strata_chat_variant v;
    int exact;
    if (has(c, "[SYSTEM_PROMPT]")) {
      if (has(c, "'[SYSTEM_PROMPT] '")) {
        v = STRATA_CHAT_V_MISTRAL_V7;
        exact =
            has(c, "'[INST] '+message.content+'[/INST]'") &&
            has(c, "'[SYSTEM_PROMPT] '+message.content+'[/SYSTEM_PROMPT]'") &&
            has(c, "' '+message.content+eos_token");
      } else {
        /* Small 3.x also writes a dated default system prompt: not copied. */
        v = STRATA_CHAT_V_MISTRAL_V7_TEKKEN;
        exact =
            has(c, "'[INST]'+message.content+'[/INST]'") &&
            has(c, "'[SYSTEM_PROMPT]'+message.content+'[/SYSTEM_PROMPT]'") &&
            !has(c, "default_system_message") && !has(c, "strftime_now");
      }
    } else if (has(c, "[AVAILABLE_TOOLS]")) {
      if (has(c, "'[INST]'+")) {
        v = STRATA_CHAT_V_MISTRAL_V3_TEKKEN;
        exact = has(c, "'[INST]'+system_message+'\n\n'+message.content+"
                       "'[/INST]'") &&
                has(c, "{{message.content+eos_token}}");
      } else {
        v = STRATA_CHAT_V_MISTRAL_V3;
        exact = has(c, "'[INST] '+system_message+'\n\n'+message.content+"
                       "'[/INST]'") &&
                has(c, "' '+message.content|trim+eos_token");
      }
      exact = exact && has(c, "ifloop.lastandsystem_messageisdefined");
    } else if (has(c, "' [INST] '+system_message")) {
      v = STRATA_CHAT_V_MISTRAL_V1;
      exact = has(c, "' [INST] '+system_message+'\n\n'+message.content+"
                     "' [/INST]'") &&
              has(c, "' [INST] '+message.content+' [/INST]'") &&
              has(c, "' '+message.content+eos_token") &&
              has(c, "ifloop.firstandsystem_messageisdefined");
    } else {
      v = STRATA_CHAT_V_MISTRAL_LEGACY;
      exact = has(c, "'[INST] '+message.content+' [/INST]'") &&
              has(c, "{{message.content+eos_token}}");
    }
    tmpl_init(t, STRATA_CHAT_MISTRAL, v, bos);
    t->approximate = !exact;
    return;
  }

  /* <|user|> alone is shared by Phi-3, Falcon 3, GLM and others: Zephyr is
   * recognised by its turn expression, and its newline after each }}. */
  if (has(c, "'<|user|>\n'+message.content+eos_token") &&
      has(c, "<|assistant|>") && !has(c, "<|end|>")) {
    tmpl_init(t, STRATA_CHAT_ZEPHYR, STRATA_CHAT_V_DEFAULT, 0);
    t->approximate =
        !(has(c, "{{'<|user|>\n'+message.content+eos_token}}\n") &&
          has(c, "{{'<|system|>\n'+message.content+eos_token}}\n") &&
          has(c, "{{'<|assistant|>\n'+message.content+eos_token}}\n") &&
          has(c, "{%ifloop.lastandadd_generation_prompt%}") &&
          has(c, "{{'<|assistant|>'}}\n"));
    return;
  }

  tmpl_init(t, STRATA_CHAT_PLAIN, STRATA_CHAT_V_DEFAULT, 0);
  t->fallback = 1;
}

int strata_chat_template_detect(const char *text, size_t len,
                                struct strata_chat_template *out, char *err,
                                size_t errlen) {
  if (!text || len == 0) {
    tmpl_init(out, STRATA_CHAT_PLAIN, STRATA_CHAT_V_DEFAULT, 0);
    out->fallback = 1;
    return 0;
  }
  char *c = canon(text, len);
  if (!c) {
    tmpl_init(out, STRATA_CHAT_PLAIN, STRATA_CHAT_V_DEFAULT, 0);
    strata_errf(err, errlen, "chat template: out of memory");
    return STRATA_CHAT_ENOMEM;
  }
  int oom = 0;
  detect_canon(c, out, &oom);
  free(c);
  if (oom) {
    strata_chat_template_free(out);
    strata_errf(err, errlen, "chat template: out of memory");
    return STRATA_CHAT_ENOMEM;
  }
  return 0;
}

int strata_chat_template_resolve(const char *override,
                                 const char *model_template,
                                 size_t model_template_len,
                                 struct strata_chat_template *out, char *err,
                                 size_t errlen) {
  if (!override || !*override)
    return strata_chat_template_detect(model_template, model_template_len, out,
                                       err, errlen);
  for (size_t i = 0; i < STRATA_ARRAY_LEN(known_names); i++)
    if (strcmp(override, known_names[i].name) == 0)
      return strata_chat_template_by_name(override, out, err, errlen);
  char *text = NULL;
  size_t len = 0;
  char ferr[256];
  if (strata_read_file(override, &text, &len, ferr, sizeof ferr) != 0) {
    tmpl_init(out, STRATA_CHAT_PLAIN, STRATA_CHAT_V_DEFAULT, 0);
    strata_errf(err, errlen,
                "engine.chat_template: neither a template name nor a readable "
                "file: %s",
                ferr);
    return STRATA_CHAT_EINVAL;
  }
  int rc = strata_chat_template_detect(text, len, out, err, errlen);
  free(text);
  if (rc != 0) return rc;
  if (out->fallback) {
    strata_errf(err, errlen,
                "engine.chat_template: %s: no known template family "
                "recognised (set a name instead, e.g. \"chatml\")",
                override);
    return STRATA_CHAT_EINVAL;
  }
  return 0;
}

/* ---- rendering ----------------------------------------------------------- */

enum role { R_SYSTEM, R_USER, R_ASSISTANT, R_TOOL };

static const char *const role_names[] = {"system", "user", "assistant", "tool"};

/* A checked message: developer already mapped to system. */
struct mv {
  enum role role;
  const char *c;
  size_t n;
  const char *tool_id;
};

struct rctx {
  const struct strata_chat_template *t;
  const struct mv *m;
  size_t n;
  const char *bos, *eos;
  size_t bos_n, eos_n;
  int gen;
  struct sbuf b;
  int bos_first;
  char *err;
  size_t errlen;
};

static void put(struct rctx *r, const char *s) {
  sb_puts(&r->b, s);
}
static void put_c(struct rctx *r, const struct mv *m) {
  sb_put(&r->b, m->c, m->n);
}
static void put_eos(struct rctx *r) {
  sb_put(&r->b, r->eos, r->eos_n);
}

/* {{ bos_token }}, for templates that write it. */
static void put_bos(struct rctx *r) {
  if (!(r->t->flags & STRATA_CHAT_F_BOS) || r->bos_n == 0) return;
  if (r->b.len == 0) r->bos_first = 1;
  sb_put(&r->b, r->bos, r->bos_n);
}

static int alternation_error(struct rctx *r, size_t i) {
  return strata_errf(r->err, r->errlen,
                     "messages[%zu].role: conversation roles must alternate "
                     "user/assistant/user/assistant/... (%s template)",
                     i, strata_chat_template_name(r->t));
}

static int role_error(struct rctx *r, size_t i, const char *supported) {
  return strata_errf(r->err, r->errlen,
                     "messages[%zu].role: '%s' is not supported by the %s "
                     "template (%s)",
                     i, role_names[r->m[i].role],
                     strata_chat_template_name(r->t), supported);
}

/* Plain fallback: "System: ...\n\nUser: ...\n\nAssistant:". */
static int render_plain(struct rctx *r) {
  static const char *const labels[] = {
      "System: ", "User: ", "Assistant: ", "Tool: "};
  for (size_t i = 0; i < r->n; i++) {
    put(r, labels[r->m[i].role]);
    put_c(r, &r->m[i]);
    put(r, "\n\n");
  }
  if (r->gen) put(r, "Assistant:");
  return 0;
}

/* meta-llama/Llama-2-7b-chat-hf:
 *   system = messages[0] if it is a system message; for the rest,
 *   (role == 'user') != (index % 2 == 0) raises;
 *   the first one's content is '<<SYS>>\n' + system + '\n<</SYS>>\n\n' +
 *   content; user: bos + '[INST] ' + content.strip() + ' [/INST]';
 *   assistant: ' ' + content.strip() + ' ' + eos; other roles write nothing.
 */
static int render_llama2(struct rctx *r) {
  size_t start = 0;
  const struct mv *sys = NULL;
  if (r->m[0].role == R_SYSTEM) {
    sys = &r->m[0];
    start = 1;
  }
  for (size_t i = start; i < r->n; i++) {
    size_t k = i - start;
    const struct mv *m = &r->m[i];
    if ((m->role == R_USER) != (k % 2 == 0)) return alternation_error(r, i);
    struct piece p[4];
    size_t np = 0;
    if (k == 0 && sys) {
      p[np++] = (struct piece){"<<SYS>>\n", 8};
      p[np++] = (struct piece){sys->c, sys->n};
      p[np++] = (struct piece){"\n<</SYS>>\n\n", 11};
    }
    p[np++] = (struct piece){m->c, m->n};
    if (m->role == R_USER) {
      put_bos(r);
      put(r, "[INST] ");
      sb_put_stripped(&r->b, p, np);
      put(r, " [/INST]");
    } else if (m->role == R_ASSISTANT) {
      put(r, " ");
      sb_put_stripped(&r->b, p, np);
      if (r->t->flags & STRATA_CHAT_F_LLAMA2_EOS_SPACE) put(r, " ");
      put_eos(r);
    }
  }
  return 0;
}

static void llama3_header(struct rctx *r, const char *role) {
  put(r, "<|start_header_id|>");
  put(r, role);
  put(r, "<|end_header_id|>\n\n");
}

/* Meta-Llama-3-8B-Instruct: per message, bos (first only) +
 * '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content|trim +
 * '<|eot_id|>'; then '<|start_header_id|>assistant<|end_header_id|>\n\n'.
 *
 * Llama 3.1-3.3 (without tools): bos, a system turn that always exists:
 * "Cutting Knowledge Date: December 2023\nToday Date: " + date + "\n\n" +
 * system|trim; the other turns as in 3.0, except tool results, which become
 * an ipython turn holding content|tojson (a string is "iterable" in Jinja,
 * so even plain text is written as a JSON string). */
static int render_llama3(struct rctx *r) {
  size_t start = 0;
  put_bos(r);
  if (r->t->variant == STRATA_CHAT_V_LLAMA31) {
    char today[32];
    const char *date = r->t->date_string;
    if (!date[0]) {
      time_t now = time(NULL);
      struct tm tm;
      if (!localtime_r(&now, &tm) ||
          strftime(today, sizeof today, "%d %b %Y", &tm) == 0)
        snprintf(today, sizeof today, "26 Jul 2024");
      date = today;
    }
    llama3_header(r, "system");
    put(r, "Cutting Knowledge Date: December 2023\nToday Date: ");
    put(r, date);
    put(r, "\n\n");
    if (r->m[0].role == R_SYSTEM) {
      sb_put_trim(&r->b, r->m[0].c, r->m[0].n);
      start = 1;
    }
    put(r, "<|eot_id|>");
  }
  for (size_t i = start; i < r->n; i++) {
    const struct mv *m = &r->m[i];
    if (m->role == R_TOOL && r->t->variant == STRATA_CHAT_V_LLAMA31) {
      llama3_header(r, "ipython");
      sb_put_json_string(&r->b, m->c, m->n);
    } else {
      llama3_header(r, role_names[m->role]);
      sb_put_trim(&r->b, m->c, m->n);
    }
    put(r, "<|eot_id|>");
  }
  if (r->gen) llama3_header(r, "assistant");
  return 0;
}

/* ChatML: '<|im_start|>' + role + '\n' + content + '<|im_end|>\n' per
 * message, then '<|im_start|>assistant\n'. Qwen adds its default system
 * turn when messages[0] is not a system message; Qwen2.5 wraps tool results
 * in a user turn, consecutive ones sharing it:
 *   '<|im_start|>user' (first of a run) + '\n<tool_response>\n' + content +
 *   '\n</tool_response>' + '<|im_end|>\n' (last of a run). */
static int render_chatml(struct rctx *r) {
  put_bos(r);
  if (r->t->default_system && r->m[0].role != R_SYSTEM) {
    put(r, "<|im_start|>system\n");
    put(r, r->t->default_system);
    put(r, "<|im_end|>\n");
  }
  int wrap = (r->t->flags & STRATA_CHAT_F_TOOL_RESPONSE) != 0;
  for (size_t i = 0; i < r->n; i++) {
    const struct mv *m = &r->m[i];
    if (wrap && m->role == R_TOOL) {
      if (i == 0 || r->m[i - 1].role != R_TOOL) put(r, "<|im_start|>user");
      put(r, "\n<tool_response>\n");
      put_c(r, m);
      put(r, "\n</tool_response>");
      if (i + 1 == r->n || r->m[i + 1].role != R_TOOL) put(r, "<|im_end|>\n");
      continue;
    }
    put(r, "<|im_start|>");
    put(r, role_names[m->role]);
    put(r, "\n");
    put_c(r, m);
    put(r, "<|im_end|>\n");
  }
  if (r->gen) put(r, "<|im_start|>assistant\n");
  return 0;
}

/* Python's len() of a string: code points. */
static size_t u8_len(const char *s) {
  size_t n = 0;
  for (; *s; s++)
    n += ((unsigned char)*s & 0xC0) != 0x80;
  return n;
}

/* The Mistral templates, by variant:
 *   legacy (first v0.1/v0.2 template): bos; alternation over all messages;
 *     user '[INST] ' + c + ' [/INST]'; assistant c + eos; else raise.
 *   v1 (v0.2 today): system = messages[0] if system; bos; alternation;
 *     user ' [INST] ' + (first: system + '\n\n') + c + ' [/INST]';
 *     assistant ' ' + c + eos; else raise.
 *   v3 (v0.3, Large 2407) and v3-tekken (Nemo): system = messages[0] if
 *     system; alternation over non-tool messages; bos; user '[INST] ' +
 *     (if it is the LAST message: system + '\n\n') + c + '[/INST]';
 *     assistant ' ' + c|trim + eos (tekken: c + eos); tool
 *     '[TOOL_RESULTS] {"content": ' + c + ', "call_id": "' + id +
 *     '"}[/TOOL_RESULTS]' (tekken without the space), the id 9 characters
 *     long; else raise. Tekken also drops the space after [INST].
 *   v7 (Large 2411) and v7-tekken (Small 3): bos; no alternation check;
 *     system '[SYSTEM_PROMPT] ' + c + '[/SYSTEM_PROMPT]', user '[INST] ' + c
 *     + '[/INST]', assistant ' ' + c + eos (tekken: no spaces); else raise.
 */
static int render_mistral(struct rctx *r) {
  enum strata_chat_variant v = r->t->variant;
  const struct mv *sys = NULL;
  size_t start = 0;

  if (v == STRATA_CHAT_V_MISTRAL_V7 || v == STRATA_CHAT_V_MISTRAL_V7_TEKKEN) {
    int sp = v == STRATA_CHAT_V_MISTRAL_V7;
    put_bos(r);
    for (size_t i = 0; i < r->n; i++) {
      const struct mv *m = &r->m[i];
      switch (m->role) {
      case R_USER:
        put(r, sp ? "[INST] " : "[INST]");
        put_c(r, m);
        put(r, "[/INST]");
        break;
      case R_SYSTEM:
        put(r, sp ? "[SYSTEM_PROMPT] " : "[SYSTEM_PROMPT]");
        put_c(r, m);
        put(r, "[/SYSTEM_PROMPT]");
        break;
      case R_ASSISTANT:
        if (sp) put(r, " ");
        put_c(r, m);
        put_eos(r);
        break;
      case R_TOOL:
        return role_error(r, i, "user, system and assistant only");
      }
    }
    return 0;
  }

  if (v == STRATA_CHAT_V_MISTRAL_LEGACY) {
    put_bos(r);
    for (size_t i = 0; i < r->n; i++) {
      const struct mv *m = &r->m[i];
      if (i == 0 && m->role == R_SYSTEM)
        return role_error(r, i, "user and assistant only");
      if ((m->role == R_USER) != (i % 2 == 0)) return alternation_error(r, i);
      if (m->role == R_USER) {
        put(r, "[INST] ");
        put_c(r, m);
        put(r, " [/INST]");
      } else if (m->role == R_ASSISTANT) {
        put_c(r, m);
        put_eos(r);
      } else {
        return role_error(r, i, "user and assistant only");
      }
    }
    return 0;
  }

  if (r->m[0].role == R_SYSTEM) {
    sys = &r->m[0];
    start = 1;
  }

  if (v == STRATA_CHAT_V_MISTRAL_V3 || v == STRATA_CHAT_V_MISTRAL_V3_TEKKEN) {
    int tekken = v == STRATA_CHAT_V_MISTRAL_V3_TEKKEN;
    /* The template checks alternation over all messages before it writes
     * anything, so its alternation errors come first. */
    size_t idx = 0;
    for (size_t i = start; i < r->n; i++) {
      if (r->m[i].role == R_TOOL) continue;
      if ((r->m[i].role == R_USER) != (idx % 2 == 0))
        return alternation_error(r, i);
      idx++;
    }
    put_bos(r);
    for (size_t i = start; i < r->n; i++) {
      const struct mv *m = &r->m[i];
      switch (m->role) {
      case R_USER:
        put(r, tekken ? "[INST]" : "[INST] ");
        if (i + 1 == r->n && sys) {
          put_c(r, sys);
          put(r, "\n\n");
        }
        put_c(r, m);
        put(r, "[/INST]");
        break;
      case R_ASSISTANT:
        if (tekken) {
          put_c(r, m);
        } else {
          put(r, " ");
          sb_put_trim(&r->b, m->c, m->n);
        }
        put_eos(r);
        break;
      case R_TOOL:
        if (!m->tool_id || u8_len(m->tool_id) != 9)
          return strata_errf(r->err, r->errlen,
                             "messages[%zu].tool_call_id: the %s template "
                             "needs tool call ids of 9 characters",
                             i, strata_chat_template_name(r->t));
        put(r, tekken ? "[TOOL_RESULTS]{\"content\": "
                      : "[TOOL_RESULTS] {\"content\": ");
        put_c(r, m);
        put(r, ", \"call_id\": \"");
        put(r, m->tool_id);
        put(r, "\"}[/TOOL_RESULTS]");
        break;
      case R_SYSTEM:
        return role_error(
            r, i,
            "user and assistant only, after an optional first system "
            "message");
      }
    }
    return 0;
  }

  /* v1 */
  put_bos(r);
  for (size_t i = start; i < r->n; i++) {
    const struct mv *m = &r->m[i];
    if ((m->role == R_USER) != ((i - start) % 2 == 0))
      return alternation_error(r, i);
    if (m->role == R_USER) {
      put(r, " [INST] ");
      if (i == start && sys) {
        put_c(r, sys);
        put(r, "\n\n");
      }
      put_c(r, m);
      put(r, " [/INST]");
    } else if (m->role == R_ASSISTANT) {
      put(r, " ");
      put_c(r, m);
      put_eos(r);
    } else {
      return role_error(
          r, i,
          "user and assistant only, after an optional first system message");
    }
  }
  return 0;
}

/* HuggingFaceH4/zephyr-7b-beta, rendered with trim_blocks as
 * apply_chat_template does (the newline after each {% %} goes, the one after
 * each }} stays): '<|' + role + '|>\n' + content + eos + '\n' per message,
 * then '<|assistant|>\n'. Other roles write nothing. */
static int render_zephyr(struct rctx *r) {
  for (size_t i = 0; i < r->n; i++) {
    const struct mv *m = &r->m[i];
    put(r, m->role == R_USER     ? "<|user|>\n"
           : m->role == R_SYSTEM ? "<|system|>\n"
                                 : "<|assistant|>\n");
    put_c(r, m);
    put_eos(r);
    put(r, "\n");
  }
  if (r->gen) put(r, "<|assistant|>\n");
  return 0;
}

/* gemma-2-9b-it (and gemma-2b-it): bos; a first system message raises;
 * (role == 'user') != (index % 2 == 0) raises; '<start_of_turn>' + role
 * ('assistant' becomes 'model', others as given) + '\n' + content|trim +
 * '<end_of_turn>\n'; then '<start_of_turn>model\n'.
 * Gemma 3 instead takes a first system message out and writes its content +
 * '\n\n' (not trimmed) at the start of the first turn. */
static int render_gemma(struct rctx *r) {
  size_t start = 0;
  const struct mv *sys = NULL;
  if (r->m[0].role == R_SYSTEM) {
    if (r->t->variant == STRATA_CHAT_V_GEMMA_NOSYS)
      return role_error(r, 0, "a system message is not supported");
    sys = &r->m[0];
    start = 1;
  }
  put_bos(r);
  for (size_t i = start; i < r->n; i++) {
    const struct mv *m = &r->m[i];
    if ((m->role == R_USER) != ((i - start) % 2 == 0))
      return alternation_error(r, i);
    put(r, "<start_of_turn>");
    put(r, m->role == R_ASSISTANT ? "model" : role_names[m->role]);
    put(r, "\n");
    if (i == start && sys) {
      put_c(r, sys);
      put(r, "\n\n");
    }
    sb_put_trim(&r->b, m->c, m->n);
    put(r, "<end_of_turn>\n");
  }
  if (r->gen) put(r, "<start_of_turn>model\n");
  return 0;
}

static int has_tool_role(const struct strata_chat_template *t) {
  switch (t->family) {
  case STRATA_CHAT_PLAIN:
  case STRATA_CHAT_LLAMA3:
  case STRATA_CHAT_CHATML:
    return 1;
  case STRATA_CHAT_MISTRAL:
    return t->variant == STRATA_CHAT_V_MISTRAL_V3 ||
           t->variant == STRATA_CHAT_V_MISTRAL_V3_TEKKEN;
  case STRATA_CHAT_LLAMA2:
  case STRATA_CHAT_ZEPHYR:
  case STRATA_CHAT_GEMMA:
    return 0;
  }
  return 0;
}

static int check_text(const char *what, size_t i, const char *s, size_t n,
                      char *err, size_t errlen) {
  if (n && !s)
    return strata_errf(err, errlen, "messages[%zu].%s: NULL with length %zu", i,
                       what, n);
  if (n && memchr(s, '\0', n))
    return strata_errf(err, errlen, "messages[%zu].%s: contains a NUL byte", i,
                       what);
  size_t bad = n ? utf8_check((const unsigned char *)s, n) : 0;
  if (bad < n)
    return strata_errf(err, errlen,
                       "messages[%zu].%s: invalid UTF-8 at byte %zu", i, what,
                       bad);
  return 0;
}

int strata_chat_apply(const struct strata_chat_template *t,
                      const struct strata_chat_msg *msgs, size_t n,
                      const char *bos_text, const char *eos_text,
                      int add_generation_prompt, char **out, size_t *out_len,
                      int *adds_bos, char *err, size_t errlen) {
  *out = NULL;
  if (out_len) *out_len = 0;
  if (adds_bos) *adds_bos = 0;
  if (!t) {
    strata_errf(err, errlen, "chat template: none given");
    return STRATA_CHAT_EINVAL;
  }
  if (n == 0 || !msgs) {
    strata_errf(err, errlen, "messages: at least one message is required");
    return STRATA_CHAT_EINVAL;
  }
  struct mv *m = strata_calloc(n, sizeof *m);
  if (!m) {
    strata_errf(err, errlen, "messages: out of memory (%zu messages)", n);
    return STRATA_CHAT_ENOMEM;
  }
  int rc = STRATA_CHAT_EINVAL;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    const char *role = msgs[i].role;
    if (!role) {
      strata_errf(err, errlen, "messages[%zu].role: missing", i);
      goto done;
    }
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
      m[i].role = R_SYSTEM;
    else if (strcmp(role, "user") == 0)
      m[i].role = R_USER;
    else if (strcmp(role, "assistant") == 0)
      m[i].role = R_ASSISTANT;
    else if (strcmp(role, "tool") == 0)
      m[i].role = R_TOOL;
    else {
      char q[48];
      err_quote(q, sizeof q, role);
      strata_errf(err, errlen,
                  "messages[%zu].role: unknown role '%s' (expected system, "
                  "developer, user, assistant or tool)",
                  i, q);
      goto done;
    }
    m[i].c = msgs[i].content ? msgs[i].content : "";
    m[i].n = msgs[i].content_len;
    if (check_text("content", i, msgs[i].content, m[i].n, err, errlen) != 0)
      goto done;
    if (m[i].role == R_TOOL) {
      if (!has_tool_role(t)) {
        strata_errf(err, errlen,
                    "messages[%zu].role: the %s template has no tool role", i,
                    strata_chat_template_name(t));
        goto done;
      }
      m[i].tool_id = msgs[i].tool_call_id;
      if (m[i].tool_id && check_text("tool_call_id", i, m[i].tool_id,
                                     strlen(m[i].tool_id), err, errlen) != 0)
        goto done;
    }
    total = m[i].n > SIZE_MAX / 2 - total ? SIZE_MAX / 2 : total + m[i].n;
  }

  struct rctx r = {
      .t = t,
      .m = m,
      .n = n,
      .bos = bos_text ? bos_text : "",
      .eos = eos_text ? eos_text : "",
      .gen = add_generation_prompt,
      .err = err,
      .errlen = errlen,
  };
  r.bos_n = strlen(r.bos);
  r.eos_n = strlen(r.eos);
  /* One allocation in the common case: the text plus room for the markup. */
  size_t guess = total + 64 * (n < SIZE_MAX / 128 ? n : 0) + 256;
  if (guess < SIZE_MAX / 2) {
    r.b.p = malloc(guess);
    if (r.b.p) {
      r.b.cap = guess;
      r.b.p[0] = '\0';
    }
  }
  switch (t->family) {
  case STRATA_CHAT_PLAIN:
    rc = render_plain(&r);
    break;
  case STRATA_CHAT_LLAMA2:
    rc = render_llama2(&r);
    break;
  case STRATA_CHAT_LLAMA3:
    rc = render_llama3(&r);
    break;
  case STRATA_CHAT_CHATML:
    rc = render_chatml(&r);
    break;
  case STRATA_CHAT_MISTRAL:
    rc = render_mistral(&r);
    break;
  case STRATA_CHAT_ZEPHYR:
    rc = render_zephyr(&r);
    break;
  case STRATA_CHAT_GEMMA:
    rc = render_gemma(&r);
    break;
  default:
    rc = strata_errf(err, errlen, "chat template: unknown family %d",
                     (int)t->family);
  }
  if (rc == 0 && r.b.oom) {
    strata_errf(err, errlen,
                "chat template: out of memory building the "
                "prompt");
    rc = STRATA_CHAT_ENOMEM;
  }
  if (rc != 0) {
    free(r.b.p);
    goto done;
  }
  if (!r.b.p) { /* nothing written, e.g. Llama 2 given only a system message */
    r.b.p = malloc(1);
    if (!r.b.p) {
      strata_errf(err, errlen, "chat template: out of memory");
      rc = STRATA_CHAT_ENOMEM;
      goto done;
    }
    r.b.p[0] = '\0';
  }
  *out = r.b.p;
  if (out_len) *out_len = r.b.len;
  if (adds_bos) *adds_bos = r.bos_first;
done:
  free(m);
  return rc;
}

/* ---- OpenAI messages from JSON ------------------------------------------- */

/* The text of a content value: a string, or the joined text parts. *n is
 * the byte count; *parts is 1 when the value is an array (text to copy). */
static int content_size(const json_t *c, size_t i, size_t *n, int *parts,
                        char *err, size_t errlen) {
  *parts = 0;
  if (json_is_string(c)) {
    *n = json_string_length(c);
    return 0;
  }
  if (!json_is_array(c))
    return strata_errf(err, errlen,
                       "messages[%zu].content: must be a string or an array "
                       "of content parts",
                       i);
  *parts = 1;
  size_t total = 0;
  for (size_t j = 0; j < json_array_size(c); j++) {
    const json_t *p = json_array_get(c, j);
    const json_t *type = json_is_object(p) ? json_object_get(p, "type") : NULL;
    if (!json_is_string(type))
      return strata_errf(err, errlen,
                         "messages[%zu].content[%zu]: must be an object with "
                         "a string \"type\"",
                         i, j);
    if (strcmp(json_string_value(type), "text") != 0) {
      char q[48];
      err_quote(q, sizeof q, json_string_value(type));
      return strata_errf(err, errlen,
                         "messages[%zu].content[%zu].type: '%s' is not "
                         "supported (only 'text')",
                         i, j, q);
    }
    const json_t *text = json_object_get(p, "text");
    if (!json_is_string(text))
      return strata_errf(err, errlen,
                         "messages[%zu].content[%zu].text: must be a string", i,
                         j);
    size_t add = json_string_length(text) + (j > 0);
    if (add > SIZE_MAX / 4 - total)
      return strata_errf(err, errlen, "messages[%zu].content: too large", i);
    total += add;
  }
  *n = total;
  return 0;
}

static int plain_string(const json_t *v, size_t i, const char *what, char *err,
                        size_t errlen) {
  if (!json_is_string(v))
    return strata_errf(err, errlen, "messages[%zu].%s: must be a string", i,
                       what);
  if (strlen(json_string_value(v)) != json_string_length(v))
    return strata_errf(err, errlen, "messages[%zu].%s: contains a NUL byte", i,
                       what);
  return 0;
}

int strata_chat_msgs_from_json(const struct json_t *jmessages,
                               struct strata_chat_msg **msgs, size_t *nout,
                               char *err, size_t errlen) {
  const json_t *a = jmessages;
  *msgs = NULL;
  *nout = 0;
  if (!json_is_array(a)) {
    strata_errf(err, errlen, "messages: must be an array");
    return STRATA_CHAT_EINVAL;
  }
  size_t n = json_array_size(a);
  if (n == 0) {
    strata_errf(err, errlen, "messages: at least one message is required");
    return STRATA_CHAT_EINVAL;
  }
  /* Pass 1 checks everything and sizes the text of content-part arrays. */
  size_t arena = 0;
  for (size_t i = 0; i < n; i++) {
    const json_t *o = json_array_get(a, i);
    if (!json_is_object(o)) {
      strata_errf(err, errlen, "messages[%zu]: must be an object", i);
      return STRATA_CHAT_EINVAL;
    }
    const json_t *role = json_object_get(o, "role");
    if (!role) {
      strata_errf(err, errlen, "messages[%zu].role: missing", i);
      return STRATA_CHAT_EINVAL;
    }
    if (plain_string(role, i, "role", err, errlen) != 0)
      return STRATA_CHAT_EINVAL;
    const json_t *calls = json_object_get(o, "tool_calls");
    if (calls && !json_is_null(calls) &&
        !(json_is_array(calls) && json_array_size(calls) == 0)) {
      strata_errf(err, errlen,
                  "messages[%zu].tool_calls: tool calls in the history are "
                  "not supported by strata's chat templates",
                  i);
      return STRATA_CHAT_EINVAL;
    }
    const json_t *id = json_object_get(o, "tool_call_id");
    if (id && !json_is_null(id) &&
        plain_string(id, i, "tool_call_id", err, errlen) != 0)
      return STRATA_CHAT_EINVAL;
    const json_t *c = json_object_get(o, "content");
    if (!c || json_is_null(c)) {
      if (strcmp(json_string_value(role), "assistant") == 0) continue;
      strata_errf(err, errlen, "messages[%zu].content: missing", i);
      return STRATA_CHAT_EINVAL;
    }
    size_t len = 0;
    int parts = 0;
    if (content_size(c, i, &len, &parts, err, errlen) != 0)
      return STRATA_CHAT_EINVAL;
    if (parts) {
      if (len > SIZE_MAX / 4 - arena) {
        strata_errf(err, errlen, "messages: too large");
        return STRATA_CHAT_EINVAL;
      }
      arena += len;
    }
  }
  if (n > (SIZE_MAX / 4 - arena) / sizeof **msgs) {
    strata_errf(err, errlen, "messages: too large");
    return STRATA_CHAT_EINVAL;
  }
  struct strata_chat_msg *v = malloc(n * sizeof *v + arena + 1);
  if (!v) {
    strata_errf(err, errlen, "messages: out of memory");
    return STRATA_CHAT_ENOMEM;
  }
  char *text = (char *)(v + n);
  /* Pass 2 fills in, joining text parts with "\n" as vLLM does. */
  for (size_t i = 0; i < n; i++) {
    const json_t *o = json_array_get(a, i);
    const json_t *c = json_object_get(o, "content");
    const json_t *id = json_object_get(o, "tool_call_id");
    v[i] = (struct strata_chat_msg){
        .role = json_string_value(json_object_get(o, "role")),
        .content = "",
        .content_len = 0,
        .tool_call_id = json_is_string(id) ? json_string_value(id) : NULL,
    };
    if (json_is_string(c)) {
      v[i].content = json_string_value(c);
      v[i].content_len = json_string_length(c);
    } else if (json_is_array(c)) {
      v[i].content = text;
      for (size_t j = 0; j < json_array_size(c); j++) {
        const json_t *t = json_object_get(json_array_get(c, j), "text");
        if (j > 0) *text++ = '\n';
        memcpy(text, json_string_value(t), json_string_length(t));
        text += json_string_length(t);
      }
      v[i].content_len = (size_t)(text - v[i].content);
    }
  }
  *msgs = v;
  *nout = n;
  return 0;
}

int strata_chat_tokens(const struct strata_chat_template *t, const char *bos_text,
                       const char *eos_text, const struct strata_tokenizer *tok,
                       const json_t *messages, int add_generation_prompt, int32_t **toks,
                       size_t *n, char *err, size_t errlen) {
  struct strata_chat_msg *msgs = NULL;
  size_t n_msgs = 0;
  int rc = strata_chat_msgs_from_json(messages, &msgs, &n_msgs, err, errlen);
  if (rc != 0) return rc == STRATA_CHAT_ENOMEM ? rc : -1;
  char *text = NULL;
  size_t len = 0;
  int adds_bos = 0;
  rc = strata_chat_apply(t, msgs, n_msgs, bos_text, eos_text, add_generation_prompt, &text,
                         &len, &adds_bos, err, errlen);
  free(msgs);
  if (rc != 0) return rc == STRATA_CHAT_ENOMEM ? rc : -1;
  rc = strata_tokenize(tok, text, len, !adds_bos, 1, toks, n, err, errlen);
  free(text);
  return rc != 0 ? -1 : 0;
}
