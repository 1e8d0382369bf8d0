/*
 * qcowkit_fs: the file system calls Node's fs module lacks, for @qcowkit/datafile's FileStore.
 *
 *   seekData(fd, offset) / seekHole(fd, offset)   lseek(SEEK_DATA / SEEK_HOLE); -1 for ENXIO
 *   fallocate(fd, mode, offset, length)           fallocate(2) on the libuv thread pool -> Promise
 *   setLock(fd, type, start, length)              fcntl(F_OFD_SETLK); false when another holder conflicts
 *   getLock(fd, type, start, length)              fcntl(F_OFD_GETLK); null or the conflicting lock
 *   fsBlockSize(fd)                               fstatfs(): { blockSize, fragmentSize }
 *   readCached(fd, buffer, at, length, position)  preadv2(RWF_NOWAIT) on the calling thread: bytes read from
 *                                                 the page cache, -1 if that would wait for the device, -2
 *                                                 if this file system cannot tell
 *   features                                      which of the above this build supports
 *
 * Every fd must be a non-negative int32 and every offset or length a safe non-negative integer
 * (at most 2^53 - 1); anything else throws a TypeError/RangeError before a system call is made.
 * Failed system calls throw an Error whose message is strerror(errno) (glibc's wording, as QEMU
 * prints it), with `code` the errno name ("EOPNOTSUPP"), `errno` the number and `syscall`.
 *
 * Built by build.mjs with the C compiler against Node's own headers; loaded by src/node/native.ts.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#define NAPI_VERSION 8

#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/falloc.h>
#include <sys/vfs.h>
#define QK_HAVE_STATFS 1
#else
#include <sys/mount.h>
#include <sys/param.h>
#define QK_HAVE_STATFS 1
#endif

#if defined(SEEK_DATA) && defined(SEEK_HOLE)
#define QK_HAVE_SEEK_HOLE 1
#else
#define QK_HAVE_SEEK_HOLE 0
#endif

#if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
#define QK_HAVE_FALLOCATE 1
#else
#define QK_HAVE_FALLOCATE 0
#endif

#if defined(F_OFD_SETLK) && defined(F_OFD_GETLK)
#define QK_HAVE_OFD_LOCKS 1
#else
#define QK_HAVE_OFD_LOCKS 0
#endif

#if defined(__linux__) && defined(RWF_NOWAIT)
#define QK_HAVE_CACHED_READ 1
#else
#define QK_HAVE_CACHED_READ 0
#endif

/* Bumped whenever the exported functions change; the loader refuses a stale build. */
#define QK_ABI_VERSION 3

/* 2^53 - 1: the largest integer a JavaScript number holds exactly. */
#define QK_MAX_SAFE 9007199254740991.0

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */

static const char *errno_name(int err) {
  switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EBUSY: return "EBUSY";
    case ENODEV: return "ENODEV";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case ENOTTY: return "ENOTTY";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case ENOLCK: return "ENOLCK";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case EINTR: return "EINTR";
#if defined(EDQUOT)
    case EDQUOT: return "EDQUOT";
#endif
#if defined(EOPNOTSUPP)
    case EOPNOTSUPP: return "EOPNOTSUPP";
#endif
#if defined(ENOTSUP) && defined(EOPNOTSUPP) && ENOTSUP != EOPNOTSUPP
    case ENOTSUP: return "ENOTSUP";
#endif
    default: return "EUNKNOWN";
  }
}

/* Build (not throw) an Error for a failed system call. */
static napi_value make_system_error(napi_env env, int err, const char *syscall) {
  napi_value code, message, error, number, name;
  napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_create_int32(env, err, &number);
  napi_set_named_property(env, error, "errno", number);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &name);
  napi_set_named_property(env, error, "syscall", name);
  return error;
}

static napi_value throw_system_error(napi_env env, int err, const char *syscall) {
  napi_throw(env, make_system_error(env, err, syscall));
  return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Argument checks                                                                             */

static bool get_args(napi_env env, napi_callback_info info, size_t expected, napi_value *argv) {
  size_t argc = expected;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return false;
  if (argc < expected) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "missing arguments");
    return false;
  }
  return true;
}

static bool get_fd(napi_env env, napi_value value, int *fd) {
  double number;
  if (napi_get_value_double(env, value, &number) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "fd must be a number");
    return false;
  }
  if (!(number >= 0 && number <= 2147483647.0) || floor(number) != number) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "fd must be a non-negative 32-bit integer");
    return false;
  }
  *fd = (int)number;
  return true;
}

/* A byte offset or length: a safe non-negative integer. `what` names it in the message. */
static bool get_byte_count(napi_env env, napi_value value, const char *what, int64_t *out) {
  double number;
  char message[96];
  if (napi_get_value_double(env, value, &number) != napi_ok) {
    snprintf(message, sizeof message, "%s must be a number", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG", message);
    return false;
  }
  if (!(number >= 0 && number <= QK_MAX_SAFE) || floor(number) != number) {
    snprintf(message, sizeof message, "%s must be a safe non-negative integer", what);
    napi_throw_range_error(env, "ERR_INVALID_ARG", message);
    return false;
  }
  *out = (int64_t)number;
  return true;
}

/* A byte range [offset, offset + length) with length >= 1 and an end that is still safe. */
static bool get_byte_range(napi_env env, napi_value offset_value, napi_value length_value, int64_t *offset,
                           int64_t *length) {
  if (!get_byte_count(env, offset_value, "offset", offset)) return false;
  if (!get_byte_count(env, length_value, "length", length)) return false;
  if (*length == 0) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "length must be at least 1");
    return false;
  }
  if ((double)*offset + (double)*length > QK_MAX_SAFE) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "offset + length must stay below 2^53");
    return false;
  }
  return true;
}

/* Copy a short string argument into `buffer`; throws a TypeError for anything else. */
static bool get_word(napi_env env, napi_value value, const char *what, char *buffer, size_t size) {
  size_t length = 0;
  char message[96];
  if (napi_get_value_string_utf8(env, value, buffer, size, &length) != napi_ok || length >= size - 1) {
    snprintf(message, sizeof message, "%s must be a short string", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG", message);
    return false;
  }
  return true;
}

static napi_value number_value(napi_env env, double number) {
  napi_value result;
  napi_create_double(env, number, &result);
  return result;
}

/* ------------------------------------------------------------------------------------------ */
/* lseek(SEEK_DATA / SEEK_HOLE)                                                                */

static napi_value seek_common(napi_env env, napi_callback_info info, bool data) {
  napi_value argv[2];
  int fd;
  int64_t offset;
  if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd) ||
      !get_byte_count(env, argv[1], "offset", &offset)) {
    return NULL;
  }
#if QK_HAVE_SEEK_HOLE
  off_t result = lseek(fd, (off_t)offset, data ? SEEK_DATA : SEEK_HOLE);
  if (result < 0) {
    /* ENXIO: no data at or after offset (SEEK_DATA), or offset at or past end of file. */
    if (errno == ENXIO) return number_value(env, -1);
    return throw_system_error(env, errno, "lseek");
  }
  return number_value(env, (double)result);
#else
  (void)fd;
  (void)offset;
  (void)data;
  return throw_system_error(env, ENOTSUP, "lseek");
#endif
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return seek_common(env, info, true); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return seek_common(env, info, false); }

/* ------------------------------------------------------------------------------------------ */
/* fallocate, on the thread pool                                                               */

typedef struct {
  int fd;
  int mode;
  int64_t offset;
  int64_t length;
  int error;
  napi_deferred deferred;
  napi_async_work work;
} FallocateJob;

/* Mode names: "allocate", "keep-size", "punch-hole" (always with keep-size), "zero-range",
 * "zero-range-keep-size". Returns false for an unknown name. */
static bool fallocate_mode(const char *name, int *mode) {
#if QK_HAVE_FALLOCATE
  if (strcmp(name, "allocate") == 0) { *mode = 0; return true; }
  if (strcmp(name, "keep-size") == 0) { *mode = FALLOC_FL_KEEP_SIZE; return true; }
#if defined(FALLOC_FL_PUNCH_HOLE)
  if (strcmp(name, "punch-hole") == 0) { *mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; return true; }
#else
  if (strcmp(name, "punch-hole") == 0) { *mode = -1; return true; }
#endif
#if defined(FALLOC_FL_ZERO_RANGE)
  if (strcmp(name, "zero-range") == 0) { *mode = FALLOC_FL_ZERO_RANGE; return true; }
  if (strcmp(name, "zero-range-keep-size") == 0) {
    *mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    return true;
  }
#else
  if (strcmp(name, "zero-range") == 0 || strcmp(name, "zero-range-keep-size") == 0) { *mode = -1; return true; }
#endif
  return false;
#else
  if (strcmp(name, "allocate") == 0 || strcmp(name, "keep-size") == 0 || strcmp(name, "punch-hole") == 0 ||
      strcmp(name, "zero-range") == 0 || strcmp(name, "zero-range-keep-size") == 0) {
    *mode = -1;
    return true;
  }
  return false;
#endif
}

static void fallocate_execute(napi_env env, void *data) {
  (void)env;
  FallocateJob *job = data;
  job->error = 0;
#if QK_HAVE_FALLOCATE
  if (job->mode < 0) {
    job->error = EOPNOTSUPP;
    return;
  }
  int result;
  do {
    result = fallocate(job->fd, job->mode, (off_t)job->offset, (off_t)job->length);
  } while (result != 0 && errno == EINTR);
  if (result != 0) job->error = errno;
#else
  job->error = ENOTSUP;
#endif
}

static void fallocate_complete(napi_env env, napi_status status, void *data) {
  FallocateJob *job = data;
  if (status != napi_ok) {
    napi_reject_deferred(env, job->deferred, make_system_error(env, EINTR, "fallocate"));
  } else if (job->error != 0) {
    napi_reject_deferred(env, job->deferred, make_system_error(env, job->error, "fallocate"));
  } else {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value fallocate_async(napi_env env, napi_callback_info info) {
  napi_value argv[4], promise, resource_name;
  char mode_name[32];
  int fd, mode;
  int64_t offset, length;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &fd) ||
      !get_word(env, argv[1], "mode", mode_name, sizeof mode_name) ||
      !get_byte_range(env, argv[2], argv[3], &offset, &length)) {
    return NULL;
  }
  if (!fallocate_mode(mode_name, &mode)) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "unknown fallocate mode");
    return NULL;
  }
  FallocateJob *job = calloc(1, sizeof *job);
  if (job == NULL) return throw_system_error(env, ENOMEM, "fallocate");
  job->fd = fd;
  job->mode = mode;
  job->offset = offset;
  job->length = length;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    free(job);
    return NULL;
  }
  napi_create_string_utf8(env, "qcowkit:fallocate", NAPI_AUTO_LENGTH, &resource_name);
  if (napi_create_async_work(env, NULL, resource_name, fallocate_execute, fallocate_complete, job, &job->work) !=
          napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    napi_reject_deferred(env, job->deferred, make_system_error(env, ENOMEM, "fallocate"));
    return promise;
  }
  return promise;
}

/* fallocateSync(fd, mode, offset, length): the same call on the calling thread, for small ranges where a
 * thread-pool round trip costs more than the call (copy-on-write zeroing of one cluster). Throws on error. */
static napi_value fallocate_sync(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  char mode_name[32];
  int fd, mode;
  int64_t offset, length;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &fd) ||
      !get_word(env, argv[1], "mode", mode_name, sizeof mode_name) ||
      !get_byte_range(env, argv[2], argv[3], &offset, &length)) {
    return NULL;
  }
  if (!fallocate_mode(mode_name, &mode)) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "unknown fallocate mode");
    return NULL;
  }
  FallocateJob job = {.fd = fd, .mode = mode, .offset = offset, .length = length};
  fallocate_execute(env, &job);
  if (job.error != 0) return throw_system_error(env, job.error, "fallocate");
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  return undefined;
}

/* ------------------------------------------------------------------------------------------ */
/* Open file description locks                                                                 */

static bool lock_type(napi_env env, napi_value value, short *type) {
  char name[16];
  if (!get_word(env, value, "lock type", name, sizeof name)) return false;
  if (strcmp(name, "read") == 0) *type = F_RDLCK;
  else if (strcmp(name, "write") == 0) *type = F_WRLCK;
  else if (strcmp(name, "unlock") == 0) *type = F_UNLCK;
  else {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "lock type must be \"read\", \"write\" or \"unlock\"");
    return false;
  }
  return true;
}

static bool lock_args(napi_env env, napi_callback_info info, int *fd, struct flock *lock) {
  napi_value argv[4];
  int64_t start, length;
  short type;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], fd) || !lock_type(env, argv[1], &type) ||
      !get_byte_range(env, argv[2], argv[3], &start, &length)) {
    return false;
  }
  memset(lock, 0, sizeof *lock);
  lock->l_type = type;
  lock->l_whence = SEEK_SET;
  lock->l_start = (off_t)start;
  lock->l_len = (off_t)length;
  lock->l_pid = 0; /* required for OFD locks */
  return true;
}

/* setLock(fd, "read" | "write" | "unlock", start, length) -> true, or false when held elsewhere. */
static napi_value set_lock(napi_env env, napi_callback_info info) {
  int fd;
  struct flock lock;
  if (!lock_args(env, info, &fd, &lock)) return NULL;
#if QK_HAVE_OFD_LOCKS
  int result;
  do {
    result = fcntl(fd, F_OFD_SETLK, &lock);
  } while (result != 0 && errno == EINTR);
  napi_value outcome;
  if (result != 0) {
    if (errno != EAGAIN && errno != EACCES) return throw_system_error(env, errno, "fcntl");
    napi_get_boolean(env, false, &outcome);
  } else {
    napi_get_boolean(env, true, &outcome);
  }
  return outcome;
#else
  (void)fd;
  return throw_system_error(env, ENOTSUP, "fcntl");
#endif
}

/* getLock(fd, "read" | "write", start, length) -> null when that lock could be taken, else the first
 * conflicting lock as { type, start, length, pid } (pid is -1 for OFD locks; length 0 = to EOF). */
static napi_value get_lock(napi_env env, napi_callback_info info) {
  int fd;
  struct flock lock;
  if (!lock_args(env, info, &fd, &lock)) return NULL;
  if (lock.l_type == F_UNLCK) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "getLock tests \"read\" or \"write\" locks");
    return NULL;
  }
#if QK_HAVE_OFD_LOCKS
  int result;
  do {
    result = fcntl(fd, F_OFD_GETLK, &lock);
  } while (result != 0 && errno == EINTR);
  if (result != 0) return throw_system_error(env, errno, "fcntl");
  napi_value outcome, type;
  if (lock.l_type == F_UNLCK) {
    napi_get_null(env, &outcome);
    return outcome;
  }
  napi_create_object(env, &outcome);
  napi_create_string_utf8(env, lock.l_type == F_WRLCK ? "write" : "read", NAPI_AUTO_LENGTH, &type);
  napi_set_named_property(env, outcome, "type", type);
  napi_set_named_property(env, outcome, "start", number_value(env, (double)lock.l_start));
  napi_set_named_property(env, outcome, "length", number_value(env, (double)lock.l_len));
  napi_set_named_property(env, outcome, "pid", number_value(env, (double)lock.l_pid));
  return outcome;
#else
  (void)fd;
  return throw_system_error(env, ENOTSUP, "fcntl");
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* fstatfs                                                                                     */

static napi_value fs_block_size(napi_env env, napi_callback_info info) {
  napi_value argv[1], outcome;
  int fd;
  if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  struct statfs stats;
  if (fstatfs(fd, &stats) != 0) return throw_system_error(env, errno, "fstatfs");
  napi_create_object(env, &outcome);
  napi_set_named_property(env, outcome, "blockSize", number_value(env, (double)stats.f_bsize));
#if defined(__linux__)
  napi_set_named_property(env, outcome, "fragmentSize", number_value(env, (double)stats.f_frsize));
#else
  napi_set_named_property(env, outcome, "fragmentSize", number_value(env, (double)stats.f_bsize));
#endif
  return outcome;
}

/* ------------------------------------------------------------------------------------------ */
/* Reads from the page cache only                                                              */

/* readCached(fd, buffer, at, length, position): preadv2(fd, buffer[at, at + length), position, RWF_NOWAIT)
 * on the calling thread. Returns the bytes read (0 at end of file; fewer than `length` when only a first
 * part is cached), -1 when no byte can be had without waiting for the device (EAGAIN), -2 when this file
 * or kernel cannot read that way (EOPNOTSUPP, ENOSYS, EINVAL: tmpfs, for one). Other errors throw. A
 * server answers cached reads this way without a thread-pool round trip, and sends the rest to the pool. */
static napi_value read_cached(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int fd;
  int64_t at, length, position;
  if (!get_args(env, info, 5, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  bool is_typed_array = false;
  napi_is_typedarray(env, argv[1], &is_typed_array);
  napi_typedarray_type type;
  size_t elements = 0, byte_offset = 0;
  void *data = NULL;
  if (!is_typed_array ||
      napi_get_typedarray_info(env, argv[1], &type, &elements, &data, NULL, &byte_offset) != napi_ok ||
      type != napi_uint8_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "buffer must be a Uint8Array");
    return NULL;
  }
  if (!get_byte_count(env, argv[2], "at", &at) || !get_byte_range(env, argv[4], argv[3], &position, &length)) {
    return NULL;
  }
  if ((uint64_t)at + (uint64_t)length > (uint64_t)elements) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "at + length must lie inside the buffer");
    return NULL;
  }
  if (length > 0x7ffff000) length = 0x7ffff000; /* what one read(2) transfers at most */
#if QK_HAVE_CACHED_READ
  struct iovec piece = {.iov_base = (uint8_t *)data + at, .iov_len = (size_t)length};
  ssize_t n;
  do {
    n = preadv2(fd, &piece, 1, (off_t)position, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) return number_value(env, (double)n);
  if (errno == EAGAIN) return number_value(env, -1);
  if (errno == EOPNOTSUPP || errno == ENOTSUP || errno == ENOSYS || errno == EINVAL) return number_value(env, -2);
  return throw_system_error(env, errno, "preadv2");
#else
  (void)fd;
  (void)data;
  (void)position;
  return number_value(env, -2);
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Module                                                                                      */

static void set_flag(napi_env env, napi_value object, const char *name, bool value) {
  napi_value flag;
  napi_get_boolean(env, value, &flag);
  napi_set_named_property(env, object, name, flag);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor functions[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fallocate", NULL, fallocate_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fallocateSync", NULL, fallocate_sync, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setLock", NULL, set_lock, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getLock", NULL, get_lock, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fsBlockSize", NULL, fs_block_size, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readCached", NULL, read_cached, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions) != napi_ok) {
    return NULL;
  }
  napi_value features, abi;
  napi_create_object(env, &features);
  set_flag(env, features, "seekHole", QK_HAVE_SEEK_HOLE);
  set_flag(env, features, "fallocate", QK_HAVE_FALLOCATE);
  set_flag(env, features, "ofdLocks", QK_HAVE_OFD_LOCKS);
  set_flag(env, features, "statfs", QK_HAVE_STATFS);
  set_flag(env, features, "cachedRead", QK_HAVE_CACHED_READ);
  napi_object_freeze(env, features);
  napi_set_named_property(env, exports, "features", features);
  napi_create_int32(env, QK_ABI_VERSION, &abi);
  napi_set_named_property(env, exports, "abiVersion", abi);
  return exports;
}

NAPI_MODULE(qcowkit_fs, init)
