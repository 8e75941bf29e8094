/* {{name}}: a Sluice postprocessor in C.
 *
 * One score tensor in, the best class out as JSON: {"index": 1, "score": 0.75}
 * (with "label" when labels are configured). Replace the logic in `best`
 * with your own; README.md says how to build and test.
 *
 * `build.sh` generates `postprocessor.h` (the WIT's types and the functions
 * to export) with wit-bindgen. Ownership follows wit-bindgen's C rules: the
 * arguments are the plugin's to free, the results are freed by the bindings
 * once the host has read them. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "postprocessor.h"

typedef exports_sluice_plugin_postprocess_result_document_item_error_t item_result;

/* What `init` read, one per instance: the host runs several and may replace
 * one at any time (after a trap), calling `init` again. */
static struct {
  char *input;    /* name of the model output holding the scores */
  char **labels;  /* class labels, in class order; NULL: none */
  size_t label_count;
} config;

static bool read_labels(config_reader *r) {
  if (config_null(r)) return true;
  if (!config_take(r, '[')) return config_fail(r, "`labels` must be a list of strings");
  size_t capacity = (size_t)(r->end - r->p) / 2 + 1; /* a label takes at least two bytes */
  config.labels = calloc(capacity, sizeof *config.labels);
  if (config_take(r, ']')) return true;
  do {
    if (!(config.labels[config.label_count] = config_string(r))) return false;
    config.label_count++;
  } while (config_take(r, ','));
  return config_take(r, ']') || config_fail(r, "`]` was expected");
}

/* One key of the configuration object. */
static bool read_field(config_reader *r, const char *key) {
  if (strcmp(key, "input") == 0) {
    free(config.input);
    return (config.input = config_string(r)) != NULL;
  }
  if (strcmp(key, "labels") == 0) return read_labels(r);
  snprintf(r->error, sizeof r->error, "unknown field `%s`, expected `input` or `labels`", key);
  return false;
}

bool exports_sluice_plugin_postprocess_init(exports_sluice_plugin_postprocess_config_t *json, postprocessor_string_t *err) {
  config_reader r = {(const char *)json->ptr, (const char *)json->ptr + json->len, {0}};
  free(config.input);
  config.input = strdup("output");
  config.labels = NULL;
  config.label_count = 0;
  bool ok = config_object(&r, read_field);
  if (ok && config.labels && config.label_count == 0) {
    snprintf(r.error, sizeof r.error, "`labels` is empty");
    ok = false;
  }
  exports_sluice_plugin_postprocess_config_free(json);
  if (!ok) postprocessor_string_dup(err, r.error);
  return ok;
}

/* The index of the highest of `n` scores, ties to the lower index; -1 if none. */
static long best(const float *scores, size_t n) {
  long found = -1;
  for (size_t i = 0; i < n; i++)
    if (found < 0 || scores[i] > scores[found]) found = (long)i;
  return found;
}

/* Append `s` to `out` as a JSON string. */
static void json_string(char **out, const char *s) {
  char *o = *out;
  *o++ = '"';
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') { *o++ = '\\'; *o++ = (char)c; }
    else if (c < 0x20) o += sprintf(o, "\\u%04x", c);
    else *o++ = (char)c;
  }
  *o++ = '"';
  *out = o;
}

/* The result document of one item, or an error message in `error`. */
static char *classify(const exports_sluice_plugin_postprocess_inference_output_t *item, char *error, size_t error_size) {
  const sluice_plugin_types_tensor_t *tensor = NULL;
  for (size_t i = 0; i < item->tensors.len && !tensor; i++) {
    const postprocessor_string_t *name = &item->tensors.ptr[i].name;
    if (name->len == strlen(config.input) && memcmp(name->ptr, config.input, name->len) == 0) tensor = &item->tensors.ptr[i];
  }
  if (!tensor) return snprintf(error, error_size, "no tensor named `%s`", config.input), NULL;
  if (tensor->dtype != SLUICE_PLUGIN_TYPES_DTYPE_FP32) return snprintf(error, error_size, "tensor `%s` is not fp32", config.input), NULL;
  /* Shape [1, K] or [K]: the host keeps a batch axis of 1 per item. The
   * bytes are little-endian, as wasm32 is; copied, as they may be unaligned. */
  size_t n = tensor->data.len / sizeof(float);
  float *scores = malloc(n * sizeof(float) + 1);
  memcpy(scores, tensor->data.ptr, n * sizeof(float));
  long index = best(scores, n);
  float score = index >= 0 ? scores[index] : 0;
  free(scores);
  if (index < 0) return snprintf(error, error_size, "tensor `%s` is empty", config.input), NULL;
  const char *label = NULL;
  if (config.labels) {
    if ((size_t)index >= config.label_count) return snprintf(error, error_size, "class %ld has no label", index), NULL;
    label = config.labels[index];
  }
  /* Escaping makes a label at most six times longer. */
  char *body = malloc(64 + (label ? 6 * strlen(label) + 16 : 0)), *o = body;
  o += sprintf(o, "{\"index\":%ld,\"score\":%.9g", index, (double)score);
  if (label) {
    o += sprintf(o, ",\"label\":");
    json_string(&o, label);
  }
  *o++ = '}';
  *o = 0;
  return body;
}

void exports_sluice_plugin_postprocess_postprocess(exports_sluice_plugin_postprocess_list_inference_output_t *items,
                                                   exports_sluice_plugin_postprocess_list_result_document_item_error_t *ret) {
  ret->len = items->len;
  ret->ptr = calloc(items->len, sizeof *ret->ptr);
  for (size_t i = 0; i < items->len; i++) {
    item_result *result = &ret->ptr[i];
    char error[200];
    char *body = classify(&items->ptr[i], error, sizeof error);
    if (!body) {
      result->is_err = true;
      result->val.err.tag = SLUICE_PLUGIN_TYPES_ITEM_ERROR_INVALID_INPUT;
      postprocessor_string_dup(&result->val.err.val.invalid_input, error);
      continue;
    }
    result->is_err = false;
    postprocessor_string_dup(&result->val.ok.content_type, "application/json");
    result->val.ok.body.ptr = (uint8_t *)body;
    result->val.ok.body.len = strlen(body);
  }
  exports_sluice_plugin_postprocess_list_inference_output_free(items);
}
