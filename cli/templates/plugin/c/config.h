/* Reading the plugin's configuration: the `[plugins.NAME.config]` table,
 * which Sluice hands to `init` as one compact JSON object. This reader
 * takes the shapes a small plugin needs (an object whose values are
 * strings, integers, `null` or arrays of strings) and says what it could
 * not read; for richer configurations use a JSON library built for WASI. */
#ifndef PLUGIN_CONFIG_H
#define PLUGIN_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *p, *end;
  char error[200];
} config_reader;

static bool config_fail(config_reader *r, const char *what) {
  if (!r->error[0]) snprintf(r->error, sizeof r->error, "the configuration is not valid JSON: %s", what);
  return false;
}

static void config_space(config_reader *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

/* Consume `c` (after white space) if it comes next. */
static bool config_take(config_reader *r, char c) {
  config_space(r);
  if (r->p < r->end && *r->p == c) {
    r->p++;
    return true;
  }
  return false;
}

static void config_utf8(char **out, uint32_t c) {
  char *o = *out;
  if (c < 0x80) *o++ = (char)c;
  else if (c < 0x800) { *o++ = (char)(0xC0 | c >> 6); *o++ = (char)(0x80 | (c & 0x3F)); }
  else if (c < 0x10000) { *o++ = (char)(0xE0 | c >> 12); *o++ = (char)(0x80 | (c >> 6 & 0x3F)); *o++ = (char)(0x80 | (c & 0x3F)); }
  else { *o++ = (char)(0xF0 | c >> 18); *o++ = (char)(0x80 | (c >> 12 & 0x3F)); *o++ = (char)(0x80 | (c >> 6 & 0x3F)); *o++ = (char)(0x80 | (c & 0x3F)); }
  *out = o;
}

static bool config_hex4(config_reader *r, uint32_t *out) {
  if (r->end - r->p < 4) return false;
  *out = 0;
  for (int i = 0; i < 4; i++) {
    char h = *r->p++;
    int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
    if (v < 0) return false;
    *out = *out << 4 | (uint32_t)v;
  }
  return true;
}

/* A JSON string, decoded, as a new NUL-terminated string (free it); NULL on error. */
static char *config_string(config_reader *r) {
  if (!config_take(r, '"')) return config_fail(r, "a string was expected"), NULL;
  /* Decoding never makes a string longer than its escaped form. */
  char *s = malloc((size_t)(r->end - r->p) + 1), *o = s;
  if (!s) return config_fail(r, "out of memory"), NULL;
  while (r->p < r->end && *r->p != '"') {
    char c = *r->p++;
    if (c != '\\') { *o++ = c; continue; }
    if (r->p == r->end) break;
    uint32_t u;
    switch (*r->p++) {
      case '"': *o++ = '"'; break;
      case '\\': *o++ = '\\'; break;
      case '/': *o++ = '/'; break;
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'n': *o++ = '\n'; break;
      case 'r': *o++ = '\r'; break;
      case 't': *o++ = '\t'; break;
      case 'u':
        if (!config_hex4(r, &u) || u == 0) { free(s); return config_fail(r, "a bad or NUL \\u escape"), NULL; }
        if (u >= 0xD800 && u < 0xDC00) { /* a surrogate pair */
          uint32_t low;
          if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' || (r->p += 2, !config_hex4(r, &low)) || low < 0xDC00 || low > 0xDFFF) {
            free(s);
            return config_fail(r, "a lone surrogate"), NULL;
          }
          u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00);
        }
        config_utf8(&o, u);
        break;
      default: free(s); return config_fail(r, "an unknown escape"), NULL;
    }
  }
  if (r->p == r->end) { free(s); return config_fail(r, "an unterminated string"), NULL; }
  r->p++;
  *o = 0;
  return s;
}

/* A JSON integer (no fraction or exponent) into *out. */
static bool config_integer(config_reader *r, long long *out) {
  config_space(r);
  char digits[24];
  size_t n = 0;
  while (r->p < r->end && n + 1 < sizeof digits && (*r->p == '-' || (*r->p >= '0' && *r->p <= '9'))) digits[n++] = *r->p++;
  digits[n] = 0;
  char *rest;
  *out = strtoll(digits, &rest, 10);
  if (n == 0 || *rest) return config_fail(r, "an integer was expected");
  return true;
}

/* `null`, consumed if it comes next. */
static bool config_null(config_reader *r) {
  config_space(r);
  if (r->end - r->p >= 4 && memcmp(r->p, "null", 4) == 0) {
    r->p += 4;
    return true;
  }
  return false;
}

/* Read one JSON object: `field(r, key)` is called at each key's value,
 * reads it and returns true, or sets `r->error` (an unknown key, a bad
 * value) and returns false. */
static bool config_object(config_reader *r, bool (*field)(config_reader *r, const char *key)) {
  if (!config_take(r, '{')) return config_fail(r, "an object was expected");
  if (config_take(r, '}')) return true;
  do {
    char *key = config_string(r);
    if (!key) return false;
    bool ok = config_take(r, ':') ? field(r, key) : config_fail(r, "`:` was expected");
    free(key);
    if (!ok) return false;
  } while (config_take(r, ','));
  return config_take(r, '}') || config_fail(r, "`}` was expected");
}

#endif
