// AES-256-GCM over many blocks in one call, for GalleonFS's encrypted volumes.
//
// node:crypto costs about 5-7 us per 4 KiB block on the development machine, most of it setting up
// a cipher object per call (the AES itself takes well under 1 us with AES-NI). This addon calls the
// same OpenSSL that Node.js is built with (its EVP interface, exported by the node binary) and sets
// a key up once (a key handle) or once per call, so a batch of blocks costs about 1 us each. Output is standard
// AES-256-GCM, byte for byte what node:crypto and @noble/ciphers produce (tests compare them).
//
// Every function checks the types and lengths of its arguments and throws a TypeError or RangeError
// before touching memory; nothing is kept between calls but the key handles JavaScript holds. On a
// failed authentication the output of that block is zeroed: unauthenticated plaintext never
// reaches JavaScript.

#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_BYTES 32
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define MAX_ARGS 8
#define MAX_BUFFERS 64
// Bumped whenever a function is added or its contract changes (src/crypto/native-aead.ts checks it).
#define ADDON_VERSION 4
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

// Marks the externals this addon made as key handles (another addon's external is refused).
static const napi_type_tag KEY_HANDLE_TAG = { 0x9a3c5e1f0b7d4c21ULL, 0x6e8f2a4b1c3d5e70ULL };

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
  if (napi_type_tag_object(env, result, &KEY_HANDLE_TAG) != napi_ok) {
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "could not tag a key handle");
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
    bool tagged = false;
    if (napi_check_object_type_tag(env, value, &KEY_HANDLE_TAG, &tagged) != napi_ok || !tagged ||
        napi_get_value_external(env, value, &data) != napi_ok || data == NULL) {
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
// byte offset of the block's input, then the same for its output. Nonces and aads are packed: 12
// bytes, and `aadLength` bytes, per block.
//
// Order of the checks: first every value that could run JavaScript is fetched (the elements of
// `buffers`: an element may be a getter), then the memory of every array is taken and every
// reference resolved and checked once, before any byte is written: no JavaScript runs between
// taking a pointer and using it, and an output can change no reference, nonce or aad (an output
// overlapping those arrays is refused).
typedef struct {
  const uint8_t *nonces;
  const uint8_t *aads;
  uint32_t aad_length;
  uint32_t block;
  size_t count;
  const uint8_t **inputs;
  uint8_t **outputs;
  // The output of block i is buffers[out_index[i]] at out_offset[i] (for the pool-thread open,
  // which resolves it again when it is done).
  uint32_t *out_index;
  size_t *out_offset;
  bytes_t status;
  napi_value buffers[MAX_BUFFERS];
  uint32_t buffer_count;
} batch_t;

static void free_batch(batch_t *b) {
  free(b->inputs);
  free(b->outputs);
  free(b->out_index);
  free(b->out_offset);
  b->inputs = NULL;
  b->outputs = NULL;
  b->out_index = NULL;
  b->out_offset = NULL;
}

// A whole number in [0, max] (not wrapped, not rounded: 2^32 + 4096 and 4096.5 are refused).
static int arg_whole(napi_env env, napi_value value, double max, uint32_t *out, const char *message) {
  napi_valuetype type;
  double number = 0;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number || napi_get_value_double(env, value, &number) != napi_ok ||
      !(number >= 0 && number <= max && number == (double)(uint32_t)number)) {
    throw_range(env, message);
    return 0;
  }
  *out = (uint32_t)number;
  return 1;
}

static int overlaps(const uint8_t *a, size_t a_length, const uint8_t *b, size_t b_length) {
  return a_length > 0 && b_length > 0 && a < b + b_length && b < a + a_length;
}

// Whether [a, a + a_length) and [b, b + b_length) overlap without starting at the same byte
// (OpenSSL works in place only on exactly the same bytes).
static int partial_overlap(const uint8_t *a, size_t a_length, const uint8_t *b, size_t b_length) {
  return a != b && overlaps(a, a_length, b, b_length);
}

// Parses the arguments of sealRefs/openRefs/openRefsAsync (key at argv[0], not looked at here; the
// status array at argv[7] when `opening`). 1, or 0 after throwing (nothing left to free).
static int parse_batch(napi_env env, napi_value *argv, int opening, batch_t *b) {
  memset(b, 0, sizeof *b);
  // 1. Values that may run JavaScript.
  bool is_array = false;
  uint32_t length = 0;
  if (napi_is_array(env, argv[5], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[5], &length) != napi_ok) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "buffers must be an array of Uint8Arrays");
    return 0;
  }
  if (length == 0 || length > MAX_BUFFERS) {
    throw_range(env, "buffers must hold between 1 and 64 Uint8Arrays");
    return 0;
  }
  for (uint32_t i = 0; i < length; i++) {
    if (napi_get_element(env, argv[5], i, &b->buffers[i]) != napi_ok) {
      if (!napi_is_exception_pending_(env)) napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "buffers must be an array of Uint8Arrays");
      return 0;
    }
  }
  b->buffer_count = length;
  if (!arg_whole(env, argv[3], MAX_AAD, &b->aad_length, "aadLength must be a whole number up to 2^20") ||
      !arg_whole(env, argv[4], MAX_DATA, &b->block, "blockLength must be a whole number between 1 and 2^30")) return 0;
  if (b->block == 0) return throw_range(env, "blockLength must be a whole number between 1 and 2^30"), 0;
  // 2. Memory: from here on no JavaScript runs until the work is done.
  bytes_t nonces, aads, list[MAX_BUFFERS];
  if (!arg_bytes(env, argv[1], &nonces, "nonces") || !arg_bytes(env, argv[2], &aads, "aads")) return 0;
  for (uint32_t i = 0; i < length; i++) if (!arg_bytes(env, b->buffers[i], &list[i], "buffers[i]")) return 0;
  napi_typedarray_type refs_type;
  size_t refs_length = 0;
  void *refs_data = NULL;
  bool is_typed = false;
  if (napi_is_typedarray(env, argv[6], &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, argv[6], &refs_type, &refs_length, &refs_data, NULL, NULL) != napi_ok || refs_type != napi_float64_array) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "refs must be a Float64Array");
    return 0;
  }
  if (opening && !arg_bytes(env, argv[7], &b->status, "status")) return 0;
  if (nonces.length % NONCE_BYTES != 0) return throw_range(env, "nonces must hold 12 bytes per block"), 0;
  uint64_t count = nonces.length / NONCE_BYTES;
  if ((uint64_t)aads.length != count * (uint64_t)b->aad_length) return throw_range(env, "aads must hold aadLength bytes per block"), 0;
  if ((uint64_t)refs_length != count * 4) return throw_range(env, "refs must hold 4 numbers per block"), 0;
  if (opening && (uint64_t)b->status.length != count) return throw_range(env, "status must hold one byte per block"), 0;
  b->count = (size_t)count;
  b->nonces = nonces.data;
  b->aads = aads.data;
  // 3. Every reference, once.
  size_t in_length = (size_t)b->block + (opening ? TAG_BYTES : 0);
  size_t out_length = (size_t)b->block + (opening ? 0 : TAG_BYTES);
  size_t slots = b->count > 0 ? b->count : 1;
  b->inputs = calloc(slots, sizeof *b->inputs);
  b->outputs = calloc(slots, sizeof *b->outputs);
  b->out_index = calloc(slots, sizeof *b->out_index);
  b->out_offset = calloc(slots, sizeof *b->out_offset);
  if (b->inputs == NULL || b->outputs == NULL || b->out_index == NULL || b->out_offset == NULL) {
    free_batch(b);
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "out of memory");
    return 0;
  }
  const double *ref = refs_data;
  const uint8_t *refs_bytes = refs_data;
  size_t refs_bytes_length = refs_length * sizeof(double);
  for (size_t i = 0; i < b->count; i++) {
    const char *bad = NULL;
    uint8_t *in = NULL, *out = NULL;
    for (int side = 0; side < 2 && bad == NULL; side++) {
      double index = ref[i * 4 + side * 2], offset = ref[i * 4 + side * 2 + 1];
      size_t need = side == 0 ? in_length : out_length;
      if (!(index >= 0 && index < length && index == (double)(uint32_t)index) ||
          !(offset >= 0 && offset <= 9007199254740991.0 && offset == (double)(uint64_t)offset)) { bad = "a block reference is outside its buffer"; break; }
      const bytes_t *buffer = &list[(uint32_t)index];
      uint64_t at = (uint64_t)offset;
      if (at > buffer->length || need > buffer->length - (size_t)at) { bad = "a block reference is outside its buffer"; break; }
      if (side == 0) in = buffer->data + at;
      else {
        out = buffer->data + at;
        b->out_index[i] = (uint32_t)index;
        b->out_offset[i] = (size_t)at;
      }
    }
    if (bad == NULL && partial_overlap(in, in_length, out, out_length)) bad = "a block's input and output overlap";
    if (bad == NULL && (overlaps(out, out_length, nonces.data, nonces.length) || overlaps(out, out_length, aads.data, aads.length) ||
                        overlaps(out, out_length, refs_bytes, refs_bytes_length) || overlaps(out, out_length, b->status.data, b->status.length))) {
      bad = "a block's output overlaps the nonces, aads, refs or status";
    }
    if (bad != NULL) {
      free_batch(b);
      return throw_range(env, bad), 0;
    }
    b->inputs[i] = in;
    b->outputs[i] = out;
  }
  return 1;
}

// sealRefs(key, nonces, aads, aadLength, blockLength, buffers, refs): seals each block's input
// (blockLength bytes) into its output (blockLength + 16 bytes: ciphertext, then the tag). On an
// exception, no output is to be used.
static napi_value seal_refs(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  batch_t b;
  if (!get_args(env, info, 7, argv) || !parse_batch(env, argv, 0, &b)) return NULL;
  if (b.count == 0) {
    free_batch(&b);
    return NULL;
  }
  int owned;
  EVP_CIPHER_CTX *ctx = key_context(env, argv[0], 1, &owned);
  if (ctx == NULL) {
    free_batch(&b);
    return NULL;
  }
  int ok = 1;
  for (size_t i = 0; i < b.count && ok; i++) {
    ok = seal_one(ctx, b.nonces + i * NONCE_BYTES, b.aads + i * b.aad_length, b.aad_length, b.inputs[i], b.block, b.outputs[i], b.outputs[i] + b.block);
  }
  if (owned) EVP_CIPHER_CTX_free(ctx);
  free_batch(&b);
  if (!ok) napi_throw_error(env, "ERR_GALLEONFS_AEAD", "OpenSSL failed to seal a block");
  return NULL;
}

// openRefs(key, nonces, aads, aadLength, blockLength, buffers, refs, status): opens each block's
// input (blockLength + 16 bytes) into its output (blockLength bytes); status[i] is 1 if block i was
// authentic, else 0 and its output is zeroed. Returns how many failed authentication.
static napi_value open_refs(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  batch_t b;
  if (!get_args(env, info, 8, argv) || !parse_batch(env, argv, 1, &b)) return NULL;
  uint32_t failures = 0;
  if (b.count > 0) {
    int owned;
    EVP_CIPHER_CTX *ctx = key_context(env, argv[0], 0, &owned);
    if (ctx == NULL) {
      free_batch(&b);
      return NULL;
    }
    for (size_t i = 0; i < b.count; i++) {
      int ok = open_one(ctx, b.nonces + i * NONCE_BYTES, b.aads + i * b.aad_length, b.aad_length, b.inputs[i], b.block, b.inputs[i] + b.block, b.outputs[i]);
      b.status.data[i] = ok ? 1 : 0;
      if (!ok) {
        failures++;
        memset(b.outputs[i], 0, b.block);
      }
    }
    if (owned) EVP_CIPHER_CTX_free(ctx);
  }
  free_batch(&b);
  napi_value result;
  napi_create_uint32(env, failures, &result);
  return result;
}

// openRefsAsync(key, nonces, aads, aadLength, blockLength, buffers, refs, status, callback): like
// openRefs, on a thread of libuv's pool, so that the calling thread can open other blocks at the same
// time; callback(error, failures) runs on the calling thread when done. `key` must be the key's
// bytes (a handle's contexts belong to its thread). The work runs on copies the addon owns: what
// JavaScript does meanwhile cannot make it touch freed memory. When done (on the calling thread),
// each authentic block is copied to its output, found again from the buffers given (an output no
// longer there is skipped and the callback gets an error), and the statuses are written.
typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref buffers[MAX_BUFFERS];
  uint32_t buffer_count;
  napi_ref status;
  uint8_t key[KEY_BYTES];
  uint32_t aad_length;
  uint32_t block;
  size_t count;
  uint8_t *nonces;
  uint8_t *aads;
  uint8_t *inputs;
  uint8_t *outputs;
  uint8_t *status_copy;
  uint32_t *out_index;
  size_t *out_offset;
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
  size_t in_length = (size_t)job->block + TAG_BYTES;
  for (size_t i = 0; i < job->count; i++) {
    const uint8_t *in = job->inputs + i * in_length;
    uint8_t *out = job->outputs + i * job->block;
    int ok = open_one(ctx, job->nonces + i * NONCE_BYTES, job->aads + i * job->aad_length, job->aad_length, in, job->block, in + job->block, out);
    job->status_copy[i] = ok ? 1 : 0;
    if (!ok) {
      job->failures++;
      OPENSSL_cleanse(out, job->block);
    }
  }
  EVP_CIPHER_CTX_free(ctx);
}

static void free_work(napi_env env, open_work_t *job) {
  for (uint32_t i = 0; i < job->buffer_count; i++) napi_delete_reference(env, job->buffers[i]);
  if (job->status != NULL) napi_delete_reference(env, job->status);
  if (job->callback != NULL) napi_delete_reference(env, job->callback);
  if (job->work != NULL) napi_delete_async_work(env, job->work);
  OPENSSL_cleanse(job->key, KEY_BYTES);
  if (job->outputs != NULL) OPENSSL_cleanse(job->outputs, job->count * (size_t)job->block);
  free(job->nonces);
  free(job->aads);
  free(job->inputs);
  free(job->outputs);
  free(job->status_copy);
  free(job->out_index);
  free(job->out_offset);
  free(job);
}

// Where block i's output is now: the same buffer and offset, checked again; NULL if gone.
static uint8_t *output_now(napi_env env, open_work_t *job, size_t i) {
  napi_value value;
  bytes_t buffer;
  bool typed = false;
  napi_typedarray_type type;
  if (napi_get_reference_value(env, job->buffers[job->out_index[i]], &value) != napi_ok || value == NULL ||
      napi_is_typedarray(env, value, &typed) != napi_ok || !typed ||
      napi_get_typedarray_info(env, value, &type, &buffer.length, (void **)&buffer.data, NULL, NULL) != napi_ok || type != napi_uint8_array) return NULL;
  size_t at = job->out_offset[i];
  if (buffer.data == NULL || at > buffer.length || job->block > buffer.length - at) return NULL;
  return buffer.data + at;
}

static void open_complete(napi_env env, napi_status status, void *data) {
  open_work_t *job = data;
  napi_value callback, global, args[2];
  napi_get_reference_value(env, job->callback, &callback);
  napi_get_global(env, &global);
  const char *error = NULL;
  if (status != napi_ok) error = "the open was cancelled";
  else if (job->failed_setup) error = "OpenSSL could not set up the AES-256-GCM key";
  else {
    napi_value status_value;
    bytes_t status_bytes = { NULL, 0 };
    bool typed = false;
    napi_typedarray_type type;
    if (napi_get_reference_value(env, job->status, &status_value) != napi_ok || status_value == NULL ||
        napi_is_typedarray(env, status_value, &typed) != napi_ok || !typed ||
        napi_get_typedarray_info(env, status_value, &type, &status_bytes.length, (void **)&status_bytes.data, NULL, NULL) != napi_ok ||
        type != napi_uint8_array || status_bytes.length != job->count) {
      error = "the status array changed while the blocks were being opened";
    }
    for (size_t i = 0; error == NULL && i < job->count; i++) {
      uint8_t *out = output_now(env, job, i);
      if (out == NULL) {
        error = "an output buffer changed while the blocks were being opened";
        break;
      }
      if (job->status_copy[i] == 1) memcpy(out, job->outputs + i * job->block, job->block);
      else memset(out, 0, job->block);
    }
    if (error == NULL) memcpy(status_bytes.data, job->status_copy, job->count);
  }
  if (error != NULL) {
    napi_value message;
    napi_create_string_utf8(env, error, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &args[0]);
    napi_get_undefined(env, &args[1]);
  } else {
    napi_get_null(env, &args[0]);
    napi_create_uint32(env, job->failures, &args[1]);
  }
  free_work(env, job);
  napi_call_function(env, global, callback, 2, args, NULL);
}

static napi_value open_refs_async(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS + 1];
  size_t argc = MAX_ARGS + 1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 9) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "too few arguments");
    return NULL;
  }
  napi_valuetype type;
  if (napi_typeof(env, argv[8], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, "ERR_GALLEONFS_AEAD", "callback must be a function");
    return NULL;
  }
  batch_t b;
  if (!parse_batch(env, argv, 1, &b)) return NULL;
  // The key last: its bytes are copied at once (no JavaScript runs from parse_batch to the copies below).
  bytes_t key;
  if (!arg_bytes(env, argv[0], &key, "key (the key's bytes; handles are not accepted here)")) {
    free_batch(&b);
    return NULL;
  }
  if (key.length != KEY_BYTES) {
    free_batch(&b);
    return throw_range(env, "the key must be 32 bytes");
  }
  open_work_t *job = calloc(1, sizeof *job);
  size_t slots = b.count > 0 ? b.count : 1;
  size_t in_length = (size_t)b.block + TAG_BYTES;
  if (job != NULL) {
    job->count = b.count;
    job->block = b.block;
    job->aad_length = b.aad_length;
    job->nonces = malloc(slots * NONCE_BYTES);
    job->aads = malloc(slots * (b.aad_length > 0 ? b.aad_length : 1));
    job->inputs = malloc(slots * in_length);
    job->outputs = malloc(slots * (size_t)b.block);
    job->status_copy = calloc(slots, 1);
    job->out_index = b.out_index;
    job->out_offset = b.out_offset;
    b.out_index = NULL;
    b.out_offset = NULL;
  }
  if (job == NULL || job->nonces == NULL || job->aads == NULL || job->inputs == NULL || job->outputs == NULL || job->status_copy == NULL) {
    if (job != NULL) free_work(env, job);
    free_batch(&b);
    napi_throw_error(env, "ERR_GALLEONFS_AEAD", "out of memory");
    return NULL;
  }
  memcpy(job->key, key.data, KEY_BYTES);
  memcpy(job->nonces, b.nonces, b.count * NONCE_BYTES);
  memcpy(job->aads, b.aads, b.count * (size_t)b.aad_length);
  for (size_t i = 0; i < b.count; i++) memcpy(job->inputs + i * in_length, b.inputs[i], in_length);
  int kept = 1;
  for (uint32_t i = 0; kept && i < b.buffer_count; i++) {
    kept = napi_create_reference(env, b.buffers[i], 1, &job->buffers[i]) == napi_ok;
    if (kept) job->buffer_count++;
  }
  free_batch(&b);
  napi_value name;
  if (!kept || napi_create_reference(env, argv[7], 1, &job->status) != napi_ok ||
      napi_create_reference(env, argv[8], 1, &job->callback) != napi_ok ||
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

/*
 * callWithSignalsBlocked(fn): calls fn() with every signal blocked in the calling thread, and
 * returns its result. Threads created meanwhile inherit that mask, so none of them ever runs a
 * signal handler. The FUSE driver mounts through it: libfuse 2 cancels its worker threads
 * (pthread_cancel) when a mount ends, and a worker cancelled inside libuv's signal handler, between
 * taking libuv's signal lock (a byte read from a pipe) and giving it back, loses that byte for
 * good: the process then never again sees SIGCHLD, and child processes are never reaped. Signals
 * that arrive during the call stay pending and are delivered once the mask is restored.
 */
static napi_value call_with_signals_blocked(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  napi_valuetype type;
  if (napi_typeof(env, argv[0], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "callWithSignalsBlocked needs a function");
    return NULL;
  }
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  napi_value global, result = NULL;
  napi_get_global(env, &global);
  napi_status status = napi_call_function(env, global, argv[0], 0, NULL, &result);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return status == napi_ok ? result : NULL;
}

/*
 * setCloseOnExec(fd) -> boolean: sets FD_CLOEXEC on the descriptor and returns whether it was set
 * already. Not encryption, but the one native piece GalleonFS has: Node offers no fcntl, and
 * libfuse (opening /dev/fuse) and LevelDB (LOCK, LOG, logs) open descriptors without close-on-exec,
 * so every child process would inherit them (src/close-on-exec.ts). fd must be an integer from 0 to
 * INT_MAX (TypeError / RangeError otherwise); a descriptor that is not open throws an Error whose
 * code is the errno name (EBADF).
 */
static napi_value set_close_on_exec(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  napi_valuetype type;
  double number = -1;
  if (napi_typeof(env, argv[0], &type) != napi_ok || type != napi_number || napi_get_value_double(env, argv[0], &number) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "the descriptor must be a number");
    return NULL;
  }
  if (!(number >= 0 && number <= 2147483647.0) || number != (double)(int)number) return throw_range(env, "the descriptor must be an integer from 0 to 2147483647");
  int fd = (int)number;
  int flags = fcntl(fd, F_GETFD);
  if (flags == -1 || ((flags & FD_CLOEXEC) == 0 && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == -1)) {
    int error = errno;
    char message[128];
    snprintf(message, sizeof message, "fcntl on descriptor %d failed: %s", fd, strerror(error));
    napi_throw_error(env, error == EBADF ? "EBADF" : "ERR_GALLEONFS_FCNTL", message);
    return NULL;
  }
  napi_value result;
  napi_get_boolean(env, (flags & FD_CLOEXEC) != 0, &result);
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
    { "callWithSignalsBlocked", NULL, call_with_signals_blocked, NULL, NULL, NULL, napi_enumerable, NULL },
    { "setCloseOnExec", NULL, set_close_on_exec, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  // The interface version: the loader refuses a build of another one (say, left from an older checkout).
  napi_value version;
  napi_create_uint32(env, ADDON_VERSION, &version);
  napi_set_named_property(env, exports, "version", version);
  return exports;
}
