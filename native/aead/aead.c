// AES-256-GCM over many blocks in one call, for GalleonFS's encrypted volumes.
//
// node:crypto costs about 5-7 us per 4 KiB block on the development machine, most of it setting up
// a cipher object per call (the AES itself takes well under 1 us with AES-NI). This addon calls the
// same OpenSSL that Node.js is built with (its EVP interface, exported by the node binary) and sets
// a key up once (a key handle) or once per call, so a batch of blocks costs about 1 us each. Output is standard
// AES-256-GCM, byte for byte what node:crypto and @noble/ciphers produce (tests compare them).
//
// Every function checks the types and lengths of its arguments and throws a TypeError or RangeError
// before touching memory; nothing is kept between calls but the key handles JavaScript holds. On a failed authentication the output of
// that block is zeroed: unauthenticated plaintext never reaches JavaScript.

#include <node_api.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_BYTES 32
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define MAX_ARGS 8
#define MAX_BUFFERS 64
// Largest plaintext and aad accepted (far above a block; keeps lengths within an int).
#define MAX_DATA (1u << 30)
#define MAX_AAD (1u << 20)

typedef struct {
  uint8_t *data;
  size_t length;
} bytes_t;

static napi_value throw_range(napi_env env, const char *message) {
  napi_throw_range_error(env, "ERR_GALLEONFS_AEAD", message);
  return NULL;
}

// A Uint8Array argument (any other typed array or value is refused).
static int arg_bytes(napi_env env, napi_value value, bytes_t *out, const char *name) {
  bool is_typed = false;
  if (napi_is_typedarray(env, value, &is_typed) != napi_ok || !is_typed) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a Uint8Array", name);
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", message);
    return 0;
  }
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  if (napi_get_typedarray_info(env, value, &type, &length, &data, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a Uint8Array", name);
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", message);
    return 0;
  }
  out->data = data;
  out->length = length;
  return 1;
}

static int napi_is_exception_pending_(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  return pending;
}

static int get_args(napi_env env, napi_callback_info info, size_t expected, napi_value *argv) {
  size_t argc = MAX_ARGS;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < expected) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "too few arguments");
    return 0;
  }
  return 1;
}

// Seals `length` bytes of `plain` into `out` (ciphertext) and `tag`. The context has the key set.
static int seal_one(EVP_CIPHER_CTX *ctx, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                    const uint8_t *plain, size_t length, uint8_t *out, uint8_t *tag) {
  int written = 0;
  if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return 0;
  if (aad_length > 0 && EVP_EncryptUpdate(ctx, NULL, &written, aad, (int)aad_length) != 1) return 0;
  if (length > 0 && EVP_EncryptUpdate(ctx, out, &written, plain, (int)length) != 1) return 0;
  if (EVP_EncryptFinal_ex(ctx, out + written, &written) != 1) return 0;
  return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, tag) == 1;
}

// Opens `length` bytes of ciphertext with `tag`; returns 1 only if authentication succeeded.
static int open_one(EVP_CIPHER_CTX *ctx, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                    const uint8_t *sealed, size_t length, const uint8_t *tag, uint8_t *out) {
  int written = 0;
  uint8_t tag_copy[TAG_BYTES];
  memcpy(tag_copy, tag, TAG_BYTES);
  if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return 0;
  if (aad_length > 0 && EVP_DecryptUpdate(ctx, NULL, &written, aad, (int)aad_length) != 1) return 0;
  if (length > 0 && EVP_DecryptUpdate(ctx, out, &written, sealed, (int)length) != 1) return 0;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag_copy) != 1) return 0;
  return EVP_DecryptFinal_ex(ctx, out + written, &written) > 0;
}

// A key set up once: one context for sealing and one for opening, reused by every call that is
// given the handle instead of the key's bytes (setting up an AES-GCM key costs about 3 us, more
// than sealing a 4 KiB block). Freed with the handle; the addon runs on one thread per handle.
typedef struct {
  EVP_CIPHER_CTX *seal;
  EVP_CIPHER_CTX *open;
} key_handle_t;

static void free_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  key_handle_t *handle = data;
  EVP_CIPHER_CTX_free(handle->seal);
  EVP_CIPHER_CTX_free(handle->open);
  free(handle);
}

static EVP_CIPHER_CTX *new_context(napi_env env, const uint8_t *key, int encrypt);

// keyHandle(key) -> an opaque handle for the 32-byte key, usable wherever a key is.
static napi_value key_handle(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  bytes_t key;
  if (!get_args(env, info, 1, argv) || !arg_bytes(env, argv[0], &key, "key")) return NULL;
  if (key.length != KEY_BYTES) return throw_range(env, "the key must be 32 bytes");
  key_handle_t *handle = calloc(1, sizeof *handle);
  if (handle == NULL) {
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "out of memory");
    return NULL;
  }
  handle->seal = new_context(env, key.data, 1);
  if (handle->seal == NULL) {
    free(handle);
    return NULL;
  }
  handle->open = new_context(env, key.data, 0);
  if (handle->open == NULL) {
    EVP_CIPHER_CTX_free(handle->seal);
    free(handle);
    return NULL;
  }
  napi_value result;
  if (napi_create_external(env, handle, free_handle, NULL, &result) != napi_ok) {
    free_handle(env, handle, NULL);
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "could not create a key handle");
    return NULL;
  }
  return result;
}

// The context to use for the key argument `value` (a key handle, or a 32-byte Uint8Array set up for
// this call only: *owned is then 1 and the caller frees it). NULL after throwing.
static EVP_CIPHER_CTX *key_context(napi_env env, napi_value value, int encrypt, int *owned) {
  napi_valuetype type;
  *owned = 0;
  if (napi_typeof(env, value, &type) == napi_ok && type == napi_external) {
    void *data = NULL;
    if (napi_get_value_external(env, value, &data) != napi_ok || data == NULL) {
      napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "key must be a Uint8Array or a key handle");
      return NULL;
    }
    key_handle_t *handle = data;
    return encrypt ? handle->seal : handle->open;
  }
  bytes_t key;
  if (!arg_bytes(env, value, &key, "key")) return NULL;
  if (key.length != KEY_BYTES) {
    throw_range(env, "the key must be 32 bytes");
    return NULL;
  }
  *owned = 1;
  return new_context(env, key.data, encrypt);
}

static EVP_CIPHER_CTX *new_context(napi_env env, const uint8_t *key, int encrypt) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL) {
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "OpenSSL could not allocate a cipher context");
    return NULL;
  }
  int ok = encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
                   : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL);
  if (ok != 1) {
    EVP_CIPHER_CTX_free(ctx);
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "OpenSSL refused the AES-256-GCM key");
    return NULL;
  }
  return ctx;
}

// Batches name their data by reference, so that a call costs no copy and no per-block lookup of
// JavaScript objects: `buffers` is an array of Uint8Arrays (typically each over a whole
// ArrayBuffer) and `refs` a Float64Array of four numbers per block: the index in `buffers` and the
// byte offset of the block's input, then the same for its output. Every reference is checked
// against its buffer's length before use. Nonces and aads are packed: 12 bytes, and `aadLength`
// bytes, per block.
typedef struct {
  uint32_t count;
  bytes_t list[MAX_BUFFERS];
} buffers_t;

static int arg_buffers(napi_env env, napi_value value, buffers_t *out) {
  bool is_array = false;
  uint32_t length = 0;
  if (napi_is_array(env, value, &is_array) != napi_ok || !is_array || napi_get_array_length(env, value, &length) != napi_ok) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "buffers must be an array of Uint8Arrays");
    return 0;
  }
  if (length == 0 || length > MAX_BUFFERS) {
    throw_range(env, "buffers must hold between 1 and 64 Uint8Arrays");
    return 0;
  }
  for (uint32_t i = 0; i < length; i++) {
    napi_value element;
    if (napi_get_element(env, value, i, &element) != napi_ok || !arg_bytes(env, element, &out->list[i], "buffers[i]")) {
      if (!napi_is_exception_pending_(env)) napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "buffers must be an array of Uint8Arrays");
      return 0;
    }
  }
  out->count = length;
  return 1;
}

// The bytes [offset, offset + length) of buffers[index], or NULL if the reference is not valid.
static uint8_t *resolve(const buffers_t *buffers, double index, double offset, size_t length) {
  if (!(index >= 0 && index < buffers->count && index == (double)(uint32_t)index)) return NULL;
  const bytes_t *buffer = &buffers->list[(uint32_t)index];
  if (!(offset >= 0 && offset <= (double)buffer->length && offset == (double)(size_t)offset)) return NULL;
  size_t at = (size_t)offset;
  if (length > buffer->length - at) return NULL;
  return buffer->data + at;
}

// Whether [a, a + a_length) and [b, b + b_length) overlap without starting at the same byte
// (OpenSSL works in place only on exactly the same bytes).
static int partial_overlap(const uint8_t *a, size_t a_length, const uint8_t *b, size_t b_length) {
  return a != b && a < b + b_length && b < a + a_length;
}

// Arguments shared by sealRefs and openRefs; returns the block count, or -1 after throwing.
static int64_t batch_args(napi_env env, napi_value *argv, bytes_t *nonces, bytes_t *aads,
                          uint32_t *aad_length, uint32_t *block, buffers_t *buffers, bytes_t *refs) {
  napi_valuetype type;
  if (!arg_bytes(env, argv[1], nonces, "nonces") || !arg_bytes(env, argv[2], aads, "aads")) return -1;
  if (napi_typeof(env, argv[3], &type) != napi_ok || type != napi_number || napi_get_value_uint32(env, argv[3], aad_length) != napi_ok ||
      napi_typeof(env, argv[4], &type) != napi_ok || type != napi_number || napi_get_value_uint32(env, argv[4], block) != napi_ok) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "aadLength and blockLength must be numbers");
    return -1;
  }
  if (!arg_buffers(env, argv[5], buffers)) return -1;
  napi_typedarray_type refs_type;
  size_t refs_length = 0;
  void *refs_data = NULL;
  bool is_typed = false;
  if (napi_is_typedarray(env, argv[6], &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, argv[6], &refs_type, &refs_length, &refs_data, NULL, NULL) != napi_ok || refs_type != napi_float64_array) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "refs must be a Float64Array");
    return -1;
  }
  refs->data = refs_data;
  refs->length = refs_length;
  if (nonces->length % NONCE_BYTES != 0) { throw_range(env, "nonces must hold 12 bytes per block"); return -1; }
  size_t count = nonces->length / NONCE_BYTES;
  if (count > UINT32_MAX) { throw_range(env, "too many blocks"); return -1; }
  if (*block == 0 || *block > MAX_DATA) { throw_range(env, "blockLength must be between 1 and 2^30"); return -1; }
  if (*aad_length > MAX_AAD || aads->length != count * *aad_length) { throw_range(env, "aads must hold aadLength bytes per block"); return -1; }
  if (refs_length != count * 4) { throw_range(env, "refs must hold 4 numbers per block"); return -1; }
  return (int64_t)count;
}

// sealRefs(key, nonces, aads, aadLength, blockLength, buffers, refs): seals each block's input
// (blockLength bytes) into its output (blockLength + 16 bytes: ciphertext, then the tag). On an
// exception, no output is to be used.
static napi_value seal_refs(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  bytes_t nonces, aads, refs;
  uint32_t aad_length, block;
  buffers_t buffers;
  if (!get_args(env, info, 7, argv)) return NULL;
  int64_t count = batch_args(env, argv, &nonces, &aads, &aad_length, &block, &buffers, &refs);
  if (count <= 0) return NULL;
  const double *ref = (const double *)refs.data;
  for (int64_t i = 0; i < count; i++) {
    const uint8_t *in = resolve(&buffers, ref[i * 4], ref[i * 4 + 1], block);
    const uint8_t *out = resolve(&buffers, ref[i * 4 + 2], ref[i * 4 + 3], (size_t)block + TAG_BYTES);
    if (in == NULL || out == NULL) return throw_range(env, "a block reference is outside its buffer");
    if (partial_overlap(in, block, out, (size_t)block + TAG_BYTES)) return throw_range(env, "a block's input and output overlap");
  }
  int owned;
  EVP_CIPHER_CTX *ctx = key_context(env, argv[0], 1, &owned);
  if (ctx == NULL) return NULL;
  for (int64_t i = 0; i < count; i++) {
    const uint8_t *plain = resolve(&buffers, ref[i * 4], ref[i * 4 + 1], block);
    uint8_t *out = resolve(&buffers, ref[i * 4 + 2], ref[i * 4 + 3], (size_t)block + TAG_BYTES);
    if (!seal_one(ctx, nonces.data + i * NONCE_BYTES, aads.data + i * aad_length, aad_length, plain, block, out, out + block)) {
      if (owned) EVP_CIPHER_CTX_free(ctx);
      napi_throw_error(env, "ERR_GALLEONFS_AEAD", "OpenSSL failed to seal a block");
      return NULL;
    }
  }
  if (owned) EVP_CIPHER_CTX_free(ctx);
  return NULL;
}

// openRefs(key, nonces, aads, aadLength, blockLength, buffers, refs, status): opens each block's
// input (blockLength + 16 bytes) into its output (blockLength bytes); status[i] is 1 if block i was
// authentic, else 0 and its output is zeroed. Returns how many failed authentication.
static napi_value open_refs(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  bytes_t nonces, aads, refs, status;
  uint32_t aad_length, block;
  buffers_t buffers;
  if (!get_args(env, info, 8, argv)) return NULL;
  int64_t count = batch_args(env, argv, &nonces, &aads, &aad_length, &block, &buffers, &refs);
  if (count < 0) return NULL;
  if (!arg_bytes(env, argv[7], &status, "status")) return NULL;
  if (status.length != (size_t)count) return throw_range(env, "status must hold one byte per block");
  const double *ref = (const double *)refs.data;
  for (int64_t i = 0; i < count; i++) {
    const uint8_t *in = resolve(&buffers, ref[i * 4], ref[i * 4 + 1], (size_t)block + TAG_BYTES);
    const uint8_t *out = resolve(&buffers, ref[i * 4 + 2], ref[i * 4 + 3], block);
    if (in == NULL || out == NULL) return throw_range(env, "a block reference is outside its buffer");
    if (partial_overlap(in, (size_t)block + TAG_BYTES, out, block)) return throw_range(env, "a block's input and output overlap");
  }
  uint32_t failures = 0;
  if (count > 0) {
    int owned;
    EVP_CIPHER_CTX *ctx = key_context(env, argv[0], 0, &owned);
    if (ctx == NULL) return NULL;
    for (int64_t i = 0; i < count; i++) {
      const uint8_t *sealed = resolve(&buffers, ref[i * 4], ref[i * 4 + 1], (size_t)block + TAG_BYTES);
      uint8_t *out = resolve(&buffers, ref[i * 4 + 2], ref[i * 4 + 3], block);
      int ok = open_one(ctx, nonces.data + i * NONCE_BYTES, aads.data + i * aad_length, aad_length, sealed, block, sealed + block, out);
      status.data[i] = ok ? 1 : 0;
      if (!ok) {
        failures++;
        memset(out, 0, block);
      }
    }
    if (owned) EVP_CIPHER_CTX_free(ctx);
  }
  napi_value result;
  napi_create_uint32(env, failures, &result);
  return result;
}

// openRefsAsync(key, nonces, aads, aadLength, blockLength, buffers, refs, status, callback): like
// openRefs, on a thread of libuv's pool, so that the calling thread can open other blocks at the same
// time; callback(error, failures) runs on the calling thread when done. `key` must be the key's
// bytes (a handle's contexts belong to its thread). Every argument is checked, and every reference
// resolved, before this returns; the arrays are kept alive until the callback, and must not be
// changed, detached or transferred before it.
typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref kept[8 + MAX_BUFFERS];
  uint32_t kept_count;
  uint8_t key[KEY_BYTES];
  const uint8_t *nonces;
  const uint8_t *aads;
  uint32_t aad_length;
  uint32_t block;
  int64_t count;
  const uint8_t **inputs;
  uint8_t **outputs;
  uint8_t *status;
  uint32_t failures;
  int failed_setup;
} open_work_t;

static void open_execute(napi_env env, void *data) {
  (void)env;
  open_work_t *job = data;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, job->key, NULL) != 1) {
    job->failed_setup = 1;
    EVP_CIPHER_CTX_free(ctx);
    return;
  }
  for (int64_t i = 0; i < job->count; i++) {
    int ok = open_one(ctx, job->nonces + i * NONCE_BYTES, job->aads + i * job->aad_length, job->aad_length,
                      job->inputs[i], job->block, job->inputs[i] + job->block, job->outputs[i]);
    job->status[i] = ok ? 1 : 0;
    if (!ok) {
      job->failures++;
      memset(job->outputs[i], 0, job->block);
    }
  }
  EVP_CIPHER_CTX_free(ctx);
}

static void free_work(napi_env env, open_work_t *job) {
  for (uint32_t i = 0; i < job->kept_count; i++) napi_delete_reference(env, job->kept[i]);
  if (job->callback != NULL) napi_delete_reference(env, job->callback);
  if (job->work != NULL) napi_delete_async_work(env, job->work);
  memset(job->key, 0, KEY_BYTES);
  free(job->inputs);
  free(job->outputs);
  free(job);
}

static void open_complete(napi_env env, napi_status status, void *data) {
  open_work_t *job = data;
  napi_value callback, global, args[2];
  napi_get_reference_value(env, job->callback, &callback);
  napi_get_global(env, &global);
  if (status != napi_ok || job->failed_setup) {
    napi_value message;
    napi_create_string_utf8(env, job->failed_setup ? "OpenSSL could not set up the AES-256-GCM key" : "the open was cancelled", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &args[0]);
    napi_get_undefined(env, &args[1]);
  } else {
    napi_get_null(env, &args[0]);
    napi_create_uint32(env, job->failures, &args[1]);
  }
  free_work(env, job);
  napi_call_function(env, global, callback, 2, args, NULL);
}

static int keep(napi_env env, open_work_t *job, napi_value value) {
  if (napi_create_reference(env, value, 1, &job->kept[job->kept_count]) != napi_ok) return 0;
  job->kept_count++;
  return 1;
}

static napi_value open_refs_async(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS + 1];
  size_t argc = MAX_ARGS + 1;
  bytes_t key, nonces, aads, refs, status;
  uint32_t aad_length, block;
  buffers_t buffers;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 9) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "too few arguments");
    return NULL;
  }
  napi_valuetype type;
  if (napi_typeof(env, argv[8], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "callback must be a function");
    return NULL;
  }
  if (!arg_bytes(env, argv[0], &key, "key (the key's bytes; handles are not accepted here)")) return NULL;
  if (key.length != KEY_BYTES) return throw_range(env, "the key must be 32 bytes");
  int64_t count = batch_args(env, argv, &nonces, &aads, &aad_length, &block, &buffers, &refs);
  if (count < 0) return NULL;
  if (!arg_bytes(env, argv[7], &status, "status")) return NULL;
  if (status.length != (size_t)count) return throw_range(env, "status must hold one byte per block");
  open_work_t *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "out of memory");
    return NULL;
  }
  job->inputs = calloc(count > 0 ? (size_t)count : 1, sizeof *job->inputs);
  job->outputs = calloc(count > 0 ? (size_t)count : 1, sizeof *job->outputs);
  if (job->inputs == NULL || job->outputs == NULL) {
    free_work(env, job);
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "out of memory");
    return NULL;
  }
  const double *ref = (const double *)refs.data;
  for (int64_t i = 0; i < count; i++) {
    const uint8_t *in = resolve(&buffers, ref[i * 4], ref[i * 4 + 1], (size_t)block + TAG_BYTES);
    uint8_t *out = resolve(&buffers, ref[i * 4 + 2], ref[i * 4 + 3], block);
    const char *bad = NULL;
    if (in == NULL || out == NULL) bad = "a block reference is outside its buffer";
    else if (partial_overlap(in, (size_t)block + TAG_BYTES, out, block)) bad = "a block's input and output overlap";
    if (bad != NULL) {
      free_work(env, job);
      return throw_range(env, bad);
    }
    job->inputs[i] = in;
    job->outputs[i] = out;
  }
  memcpy(job->key, key.data, KEY_BYTES);
  job->nonces = nonces.data;
  job->aads = aads.data;
  job->aad_length = aad_length;
  job->block = block;
  job->count = count;
  job->status = status.data;
  // Kept alive until the callback: the packed arrays and every buffer (not only the array naming them).
  int kept = keep(env, job, argv[1]) && keep(env, job, argv[2]) && keep(env, job, argv[6]) && keep(env, job, argv[7]) && keep(env, job, argv[5]);
  for (uint32_t i = 0; kept && i < buffers.count; i++) {
    napi_value element;
    kept = napi_get_element(env, argv[5], i, &element) == napi_ok && keep(env, job, element);
  }
  napi_value name;
  if (!kept || napi_create_reference(env, argv[8], 1, &job->callback) != napi_ok ||
      napi_create_string_utf8(env, "galleonfs:aead-open", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, open_execute, open_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    free_work(env, job);
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "could not start the open on a pool thread");
    return NULL;
  }
  return NULL;
}

// seal(key, nonce, aad, plain, out): out = ciphertext || tag (plain length + 16 bytes).
static napi_value seal(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  bytes_t nonce, aad, plain, out;
  if (!get_args(env, info, 5, argv)) return NULL;
  if (!arg_bytes(env, argv[1], &nonce, "nonce") ||
      !arg_bytes(env, argv[2], &aad, "aad") || !arg_bytes(env, argv[3], &plain, "plain") ||
      !arg_bytes(env, argv[4], &out, "out")) return NULL;
  if (nonce.length != NONCE_BYTES) return throw_range(env, "the nonce must be 12 bytes");
  if (plain.length > MAX_DATA || aad.length > MAX_AAD) return throw_range(env, "plain or aad too large");
  if (out.length != plain.length + TAG_BYTES) return throw_range(env, "out must be the plain length + 16 bytes");
  int owned;
  EVP_CIPHER_CTX *ctx = key_context(env, argv[0], 1, &owned);
  if (ctx == NULL) return NULL;
  int ok = seal_one(ctx, nonce.data, aad.data, aad.length, plain.data, plain.length, out.data, out.data + plain.length);
  if (owned) EVP_CIPHER_CTX_free(ctx);
  if (!ok) {
    memset(out.data, 0, out.length);
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "OpenSSL failed to seal");
  }
  return NULL;
}

// open(key, nonce, aad, sealed, out) -> boolean: out = plaintext (sealed length - 16 bytes) when
// authentic; false (and out zeroed) otherwise.
static napi_value open_(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  bytes_t nonce, aad, sealed, out;
  if (!get_args(env, info, 5, argv)) return NULL;
  if (!arg_bytes(env, argv[1], &nonce, "nonce") ||
      !arg_bytes(env, argv[2], &aad, "aad") || !arg_bytes(env, argv[3], &sealed, "sealed") ||
      !arg_bytes(env, argv[4], &out, "out")) return NULL;
  if (nonce.length != NONCE_BYTES) return throw_range(env, "the nonce must be 12 bytes");
  if (sealed.length < TAG_BYTES || sealed.length > MAX_DATA + TAG_BYTES || aad.length > MAX_AAD) return throw_range(env, "sealed must be 16 bytes (the tag) or more");
  size_t length = sealed.length - TAG_BYTES;
  if (out.length != length) return throw_range(env, "out must be the sealed length - 16 bytes");
  int owned;
  EVP_CIPHER_CTX *ctx = key_context(env, argv[0], 0, &owned);
  if (ctx == NULL) return NULL;
  int ok = open_one(ctx, nonce.data, aad.data, aad.length, sealed.data, length, sealed.data + length, out.data);
  if (owned) EVP_CIPHER_CTX_free(ctx);
  if (!ok) memset(out.data, 0, out.length);
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor properties[] = {
    { "keyHandle", NULL, key_handle, NULL, NULL, NULL, napi_enumerable, NULL },
    { "seal", NULL, seal, NULL, NULL, NULL, napi_enumerable, NULL },
    { "open", NULL, open_, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sealRefs", NULL, seal_refs, NULL, NULL, NULL, napi_enumerable, NULL },
    { "openRefs", NULL, open_refs, NULL, NULL, NULL, napi_enumerable, NULL },
    { "openRefsAsync", NULL, open_refs_async, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  return exports;
}
