/* {{name}}: a Sluice preprocessor in C.
 *
 * UTF-8 text holding numbers separated by commas or whitespace in, one fp32
 * tensor of shape [1, N] out. Replace the logic in `parse` with your own;
 * README.md says how to build and test.
 *
 * `build.sh` generates `preprocessor.h` (the WIT's types and the functions
 * to export) with wit-bindgen. Ownership follows wit-bindgen's C rules: the
 * arguments are the plugin's to free, the results are freed by the bindings
 * once the host has read them. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "preprocessor.h"

typedef exports_sluice_plugin_preprocess_result_list_tensor_item_error_t item_result;

/* What `init` read, one per instance: the host runs several and may replace
 * one at any time (after a trap), calling `init` again. */
static struct {
  char *output;      /* name of the model input the tensor is for */
  long long length;  /* how many numbers each input must hold; -1: any */
} config = {NULL, -1};

/* Why `init` or an item failed, for the host. */
static void set_message(preprocessor_string_t *to, const char *message) {
  preprocessor_string_dup(to, message);
}

/* One key of the configuration object. */
static bool read_field(config_reader *r, const char *key) {
  if (strcmp(key, "output") == 0) {
    free(config.output);
    return (config.output = config_string(r)) != NULL;
  }
  if (strcmp(key, "length") == 0) return config_null(r) || config_integer(r, &config.length);
  snprintf(r->error, sizeof r->error, "unknown field `%s`, expected `output` or `length`", key);
  return false;
}

bool exports_sluice_plugin_preprocess_init(exports_sluice_plugin_preprocess_config_t *json, preprocessor_string_t *err) {
  config_reader r = {(const char *)json->ptr, (const char *)json->ptr + json->len, {0}};
  free(config.output);
  config.output = strdup("input");
  config.length = -1;
  bool ok = config_object(&r, read_field);
  if (ok && config.output[0] == 0) {
    snprintf(r.error, sizeof r.error, "`output` must not be empty");
    ok = false;
  }
  exports_sluice_plugin_preprocess_config_free(json);
  if (!ok) set_message(err, r.error);
  return ok;
}

/* Whether the bytes are UTF-8 (its byte structure; overlong forms and
 * surrogates are not looked for). */
static bool utf8(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    size_t more = c < 0x80 ? 0 : (c >= 0xC2 && c < 0xE0) ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c >= 0xF0 && c < 0xF5) ? 3 : SIZE_MAX;
    if (more == SIZE_MAX || more > n - i - 1) return false;
    for (size_t k = 1; k <= more; k++)
      if ((s[i + k] & 0xC0) != 0x80) return false;
    i += more + 1;
  }
  return true;
}

/* The numbers in `text` (`n` bytes) into *values (*count of them), checked
 * against `length`; on error, a message in `error`. */
static bool parse(const char *text, size_t n, long long length, float **values, size_t *count, char *error, size_t error_size) {
  *values = malloc((n / 2 + 1) * sizeof **values); /* at most one number per two bytes */
  *count = 0;
  char token[64];
  for (size_t i = 0; i < n;) {
    if (text[i] == ',' || text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r' || text[i] == '\f' || text[i] == '\v') {
      i++;
      continue;
    }
    size_t start = i;
    while (i < n && !strchr(", \t\n\r\f\v", text[i])) i++;
    size_t len = i - start;
    char *end = NULL;
    float v = 0;
    if (len < sizeof token) {
      memcpy(token, text + start, len);
      token[len] = 0;
      v = strtof(token, &end);
    }
    if (len >= sizeof token || len == 0 || *end) {
      snprintf(error, error_size, "`%.*s` is not a number", (int)(len < 40 ? len : 40), text + start);
      return false;
    }
    (*values)[(*count)++] = v;
  }
  if (*count == 0) return snprintf(error, error_size, "the input holds no numbers"), false;
  if (length >= 0 && (long long)*count != length) {
    snprintf(error, error_size, "expected %lld numbers, got %zu", length, *count);
    return false;
  }
  return true;
}

static void invalid(item_result *result, const char *message) {
  result->is_err = true;
  result->val.err.tag = SLUICE_PLUGIN_TYPES_ITEM_ERROR_INVALID_INPUT;
  set_message(&result->val.err.val.invalid_input, message);
}

void exports_sluice_plugin_preprocess_preprocess(exports_sluice_plugin_preprocess_list_raw_input_t *items,
                                                 exports_sluice_plugin_preprocess_list_result_list_tensor_item_error_t *ret) {
  ret->len = items->len;
  ret->ptr = calloc(items->len, sizeof *ret->ptr);
  for (size_t i = 0; i < items->len; i++) {
    preprocessor_list_u8_t *data = &items->ptr[i].data;
    item_result *result = &ret->ptr[i];
    if (!utf8(data->ptr, data->len)) {
      invalid(result, "the input is not UTF-8 text");
      continue;
    }
    float *values;
    size_t count;
    char error[128];
    if (!parse((const char *)data->ptr, data->len, config.length, &values, &count, error, sizeof error)) {
      free(values);
      invalid(result, error);
      continue;
    }
    /* Tensors keep a batch axis of 1: the host stacks items into batches.
     * wasm32 is little-endian, as the tensor's bytes must be. */
    sluice_plugin_types_tensor_t *tensor = calloc(1, sizeof *tensor);
    preprocessor_string_dup(&tensor->name, config.output);
    tensor->dtype = SLUICE_PLUGIN_TYPES_DTYPE_FP32;
    tensor->shape.len = 2;
    tensor->shape.ptr = malloc(2 * sizeof(uint32_t));
    tensor->shape.ptr[0] = 1;
    tensor->shape.ptr[1] = (uint32_t)count;
    tensor->data.len = count * sizeof(float);
    tensor->data.ptr = (uint8_t *)values;
    result->is_err = false;
    result->val.ok.ptr = tensor;
    result->val.ok.len = 1;
  }
  exports_sluice_plugin_preprocess_list_raw_input_free(items);
}
