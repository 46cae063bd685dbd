/* Oversized request bodies answered in JSON (http_scan.h). */
#include "config.h"

#include "http_scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void strata_http_scan_init(struct strata_http_scan *s, uint64_t limit) {
  memset(s, 0, sizeof *s);
  s->limit = limit;
}

/* One change to the bytes looked at: [off, off + len) becomes repl. */
struct edit {
  size_t off, len;
  char repl[96];
  size_t rlen;
};

struct edits {
  struct edit *e;
  size_t n, cap;
};

static int add_edit(struct edits *x, size_t off, size_t len, const char *repl) {
  if (x->n == x->cap) {
    const size_t cap = x->cap ? 2 * x->cap : 4;
    struct edit *e = realloc(x->e, cap * sizeof *e);
    if (!e) return -1;
    x->e = e;
    x->cap = cap;
  }
  struct edit *d = &x->e[x->n++];
  d->off = off;
  d->len = len;
  d->rlen = repl ? strlen(repl) : 0;
  if (d->rlen) memcpy(d->repl, repl, d->rlen);
  return 0;
}

static int is_lws(char c) { return c == ' ' || c == '\t'; }

/* The value of a Content-Length line as evhttp reads it (strtoll: optional
 * blanks and sign, digits, then nothing but blanks): 0 with *v (saturated
 * at UINT64_MAX), or -1 where evhttp would refuse it. */
static int parse_length(const char *p, size_t n, uint64_t *v) {
  size_t i = 0;
  while (i < n && is_lws(p[i])) i++;
  if (i < n && p[i] == '+') i++;
  const size_t d0 = i;
  uint64_t x = 0;
  for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
    const unsigned dig = (unsigned)(p[i] - '0');
    x = x > (UINT64_MAX - dig) / 10 ? UINT64_MAX : x * 10 + dig;
  }
  if (i == d0) return -1;
  while (i < n && is_lws(p[i])) i++;
  if (i != n) return -1;
  *v = x;
  return 0;
}

/* Whether line [p, p + n) is header `name` (case-insensitive), with *val
 * at what follows the colon. */
static int header_is(const char *p, size_t n, const char *name, const char **val, size_t *vn) {
  const size_t k = strlen(name);
  if (n <= k || p[k] != ':' || strncasecmp(p, name, k) != 0) return 0;
  *val = p + k + 1;
  *vn = n - k - 1;
  return 1;
}

/* A complete line of the head, [p, p + n) without its line end, at offset
 * off of the bytes looked at. */
static int on_line(struct strata_http_scan *s, const char *p, size_t n, size_t off,
                   struct edits *ed) {
  if (!s->in_head) {
    if (n == 0) return 0; /* blank lines before a request */
    s->in_head = 1;
    /* libevent 2.1 reads a body for every method but HEAD and TRACE */
    s->body_method = !(n > 5 && memcmp(p, "HEAD ", 5) == 0) &&
                     !(n > 6 && memcmp(p, "TRACE ", 6) == 0);
    s->n_length = 0;
    s->length = 0;
    s->chunked = s->bad = s->last_was_length = 0;
    s->rewritten = 0;
    return 0;
  }
  if (n == 0 || p[0] == '\0') { /* the end of the head (evhttp's test): its body follows */
    s->in_head = 0;
    if (!s->body_method) return 0;
    if (s->chunked) { /* evhttp reads chunks, whatever the length says */
      s->mode = 2;      /* it decides; the rest of the connection passes */
      return 0;
    }
    if (s->rewritten > 0) { /* the body the client declared first goes */
      s->mode = 1;
      s->body_left = s->rewritten;
      s->drop = 1;
      return 0;
    }
    if (s->bad || s->n_length > 1) {
      s->mode = 2;
      return 0;
    }
    if (s->n_length == 1 && s->length > 0) {
      s->mode = 1;
      s->body_left = s->length;
      s->drop = s->length > s->limit;
    }
    return 0;
  }
  const char *v;
  size_t vn;
  if (header_is(p, n, STRATA_HTTP_TOO_LARGE_HEADER, &v, &vn)) {
    /* the client's own: renamed, so that only the scanner's counts */
    char repl[96];
    snprintf(repl, sizeof repl, "X-Client-Body-Too-Large:%.*s", vn > 40 ? 40 : (int)vn, v);
    return add_edit(ed, off, n, repl);
  }
  if (!s->body_method) return 0;
  if (is_lws(p[0])) { /* a folded continuation of the previous header */
    if (s->last_was_length) s->bad = 1;
    return 0;
  }
  s->last_was_length = 0;
  if (header_is(p, n, "Transfer-Encoding", &v, &vn)) {
    s->chunked = 1;
  } else if (header_is(p, n, "Content-Length", &v, &vn)) {
    s->last_was_length = 1;
    s->n_length++;
    uint64_t len;
    if (parse_length(v, vn, &len) != 0) {
      s->bad = 1;
    } else {
      s->length = len;
      if (len > s->limit && s->n_length == 1) {
        s->rewritten = len;
        char repl[96];
        snprintf(repl, sizeof repl, "Content-Length: 0\r\n" STRATA_HTTP_TOO_LARGE_HEADER ": %llu",
                 (unsigned long long)len);
        if (add_edit(ed, off, n, repl) != 0) return -1;
      }
    }
  }
  return 0;
}

int strata_http_scan_feed(struct strata_http_scan *s, struct evbuffer *in, size_t n_added) {
  if (s->busy || s->mode == 2 || n_added == 0) return 0;
  const size_t total = evbuffer_get_length(in);
  if (n_added > total) n_added = total;
  if (s->mode == 1 && !s->drop) { /* a body let through: counted, not copied */
    if (s->body_left > n_added) {
      s->body_left -= n_added;
      return 0;
    }
    n_added -= (size_t)s->body_left; /* it ends here: a head may follow */
    s->body_left = 0;
    s->mode = 0; /* partial is 0: a feed that ends in a body leaves it so */
    if (n_added == 0) return 0;
  }
  const size_t start = total - n_added;
  /* the current line's earlier bytes are still there: evhttp takes whole
   * lines only */
  const size_t back = s->mode == 0 ? (s->partial <= start ? s->partial : start) : 0;
  const size_t from = start - back, len = total - from;
  char *t = malloc(len);
  if (!t) {
    s->mode = 2;
    return -1;
  }
  struct evbuffer_ptr at;
  if (evbuffer_ptr_set(in, &at, from, EVBUFFER_PTR_SET) != 0 ||
      evbuffer_copyout_from(in, &at, t, len) != (ev_ssize_t)len) {
    free(t);
    s->mode = 2;
    return -1;
  }
  struct edits ed = {0};
  size_t i = back, ls = 0;
  int rc = 0;
  while (i < len && s->mode != 2 && rc == 0) {
    if (s->mode == 1) {
      const size_t take = s->body_left < len - i ? (size_t)s->body_left : len - i;
      if (s->drop) rc = add_edit(&ed, i, take, NULL);
      s->body_left -= take;
      i += take;
      if (s->body_left == 0) {
        s->mode = 0;
        s->drop = 0;
        ls = i;
      }
      continue;
    }
    const char *nl = memchr(t + i, '\n', len - i);
    if (!nl) {
      i = len;
      break;
    }
    const size_t e = (size_t)(nl - t);
    const size_t le = e > ls && t[e - 1] == '\r' ? e - 1 : e;
    rc = on_line(s, t + ls, le - ls, ls, &ed);
    i = e + 1;
    ls = i;
  }
  s->partial = s->mode == 0 ? len - ls : 0;
  if (rc == 0 && ed.n > 0) {
    /* the looked-at bytes with the edits, built first (in is untouched if
     * that fails); then in = its first `from` bytes, then these */
    struct evbuffer *tail = evbuffer_new(), *pre = evbuffer_new();
    rc = tail && pre ? 0 : -1;
    size_t pos = 0;
    for (size_t k = 0; k < ed.n && rc == 0; k++) {
      if (evbuffer_add(tail, t + pos, ed.e[k].off - pos) != 0 ||
          evbuffer_add(tail, ed.e[k].repl, ed.e[k].rlen) != 0)
        rc = -1;
      pos = ed.e[k].off + ed.e[k].len;
    }
    if (rc == 0 && evbuffer_add(tail, t + pos, len - pos) != 0) rc = -1;
    if (rc == 0) {
      /* front-end operations only: outside evbuffer_read, the input's end
       * is frozen (bufferevent_socket), its front never is */
      s->busy = 1; /* each change below calls this again */
      if ((from > 0 && evbuffer_remove_buffer(in, pre, from) != (int)from) ||
          evbuffer_drain(in, len) != 0) {
        rc = -1; /* in: the looked-at bytes as they were */
      } else if (evbuffer_add_buffer(pre, tail) != 0) {
        rc = -1; /* out of memory: them as they were, if that still fits */
        evbuffer_add(pre, t, len);
      }
      evbuffer_prepend_buffer(in, pre);
      s->busy = 0;
    }
    if (tail) evbuffer_free(tail);
    if (pre) evbuffer_free(pre);
  }
  if (rc != 0) s->mode = 2;
  free(ed.e);
  free(t);
  return rc;
}

const char *strata_http_body_too_large(struct evhttp_request *req, int *keep_open) {
  const struct evkeyvalq *h = evhttp_request_get_input_headers(req);
  const char *v = evhttp_find_header(h, STRATA_HTTP_TOO_LARGE_HEADER);
  *keep_open = v && !evhttp_find_header(h, "Transfer-Encoding") && !evhttp_find_header(h, "Expect");
  return v;
}
