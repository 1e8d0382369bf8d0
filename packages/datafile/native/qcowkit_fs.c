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
 *   copyRange(srcFd, srcPosition, dstFd,          pread + pwrite file to file on two threads -> Promise;
 *             dstPosition, length)                past the source's end reads as zeros
 *   scanZeroSectors(fd, position, length, flags)  pread on two threads, one flag per 512-byte sector:
 *                                                 1 when it reads as all zeros -> Promise
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
#include <pthread.h>
#include <stdatomic.h>
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
#define QK_ABI_VERSION 4

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
/* Range work on two threads: copyRange and scanZeroSectors                                    */

/* The range is cut into pieces claimed through an atomic counter by two loops: the async work's own
 * thread-pool thread and one extra pthread (the machines this is tuned for have two cores). The thread
 * that reads a piece also writes or scans it, while the piece is still in its core's cache: measured
 * on tmpfs, that copies at about twice the speed of reading everything and then writing it. */

/* Copy pieces: large enough to make system calls cheap, small enough to stay in a core's L2/L3. */
#define QK_COPY_PIECE ((int64_t)2 * 1024 * 1024)
/* Scan pieces: small enough to stay in L2 between the read and the scan. */
#define QK_SCAN_PIECE ((int64_t)256 * 1024)
#define QK_SECTOR 512
#define QK_BUFFER_ALIGNMENT 4096

typedef struct RangeJob RangeJob;

struct RangeJob {
  /* Handles one piece: [start, start + length) relative to the range, in `buffer`. False on error. */
  bool (*piece)(RangeJob *job, uint8_t *buffer, int64_t start, int64_t length);
  int src_fd;
  int dst_fd; /* copyRange only */
  int64_t src_position;
  int64_t dst_position; /* copyRange only */
  int64_t length;
  int64_t piece_size;
  int64_t piece_count;
  bool single_thread; /* overlapping ranges of one file: one loop, in a safe order */
  bool backward;      /* claim pieces from the last one down (destination after an overlapping source) */
  uint8_t *flags;     /* scanZeroSectors only: one byte per sector */
  atomic_llong next_piece;
  atomic_int failed; /* set by the first loop that fails; the others stop claiming pieces */
  /* Written only by the loop that set `failed`; read after the helper thread was joined. */
  int error;
  const char *syscall;
  int64_t error_position;
  const char *name; /* for rejections made outside the loops */
  napi_ref flags_ref;
  napi_deferred deferred;
  napi_async_work work;
};

static void range_fail(RangeJob *job, int err, const char *syscall, int64_t position) {
  int expected = 0;
  if (atomic_compare_exchange_strong(&job->failed, &expected, 1)) {
    job->error = err;
    job->syscall = syscall;
    job->error_position = position;
  }
}

/* pread `length` bytes at `position` into `buffer`, continuing short reads; zeros past end of file. */
static bool read_fully(RangeJob *job, int fd, uint8_t *buffer, int64_t position, int64_t length) {
  int64_t done = 0;
  while (done < length) {
    ssize_t n = pread(fd, buffer + done, (size_t)(length - done), (off_t)(position + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      range_fail(job, errno, "pread", position + done);
      return false;
    }
    if (n == 0) {
      memset(buffer + done, 0, (size_t)(length - done)); /* end of file */
      return true;
    }
    done += n;
  }
  return true;
}

/* pwrite all of `buffer[0, length)` at `position`, continuing short writes. */
static bool write_fully(RangeJob *job, int fd, const uint8_t *buffer, int64_t position, int64_t length) {
  int64_t done = 0;
  while (done < length) {
    ssize_t n = pwrite(fd, buffer + done, (size_t)(length - done), (off_t)(position + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      range_fail(job, errno, "pwrite", position + done);
      return false;
    }
    if (n == 0) {
      range_fail(job, EIO, "pwrite", position + done); /* no progress */
      return false;
    }
    done += n;
  }
  return true;
}

static void scan_sectors(RangeJob *job, const uint8_t *buffer, int64_t start, int64_t length);

/* Read a piece, scan it for zero sectors when asked (copyRange with flags), write it. */
static bool copy_piece(RangeJob *job, uint8_t *buffer, int64_t start, int64_t length) {
  if (!read_fully(job, job->src_fd, buffer, job->src_position + start, length)) return false;
  if (job->flags != NULL) scan_sectors(job, buffer, start, length);
  return write_fully(job, job->dst_fd, buffer, job->dst_position + start, length);
}

/* True when `bytes[0, length)` are all zero; `bytes` is 8-byte aligned. Data that is not zero usually
 * shows it in its first word, so that one is tested alone before the rest is OR-ed together. */
static bool all_zero(const uint8_t *bytes, size_t length) {
  size_t words = length / 8;
  const uint64_t *word = (const uint64_t *)(const void *)bytes;
  if (words > 0 && word[0] != 0) return false;
  uint64_t any = 0;
  for (size_t i = 1; i < words; i++) any |= word[i];
  for (size_t i = words * 8; i < length; i++) any |= bytes[i];
  return any == 0;
}

static void scan_sectors(RangeJob *job, const uint8_t *buffer, int64_t start, int64_t length) {
  uint8_t *flags = job->flags + start / QK_SECTOR; /* pieces start on sector boundaries of the range */
  for (int64_t at = 0; at < length; at += QK_SECTOR) {
    int64_t size = length - at < QK_SECTOR ? length - at : QK_SECTOR;
    *flags++ = all_zero(buffer + at, (size_t)size) ? 1 : 0;
  }
}

static bool scan_piece(RangeJob *job, uint8_t *buffer, int64_t start, int64_t length) {
  if (!read_fully(job, job->src_fd, buffer, job->src_position + start, length)) return false;
  scan_sectors(job, buffer, start, length);
  return true;
}

static void range_loop(RangeJob *job, uint8_t *buffer) {
  while (atomic_load(&job->failed) == 0) {
    int64_t claimed = (int64_t)atomic_fetch_add(&job->next_piece, 1);
    if (claimed >= job->piece_count) return;
    int64_t index = job->backward ? job->piece_count - 1 - claimed : claimed;
    int64_t start = index * job->piece_size;
    int64_t length = job->length - start < job->piece_size ? job->length - start : job->piece_size;
    if (!job->piece(job, buffer, start, length)) return;
  }
}

/* Buffers are kept for the next job instead of freed: a fresh 2 MiB buffer costs 512 page faults, and
 * page faults are slow in virtual machines (measured: copies in 16 MiB calls took twice as long with a
 * new buffer per call). At most QK_KEPT_BUFFERS of each size are kept (two per job, a few jobs at once). */
#define QK_KEPT_BUFFERS 4
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *kept_copy[QK_KEPT_BUFFERS];
static uint8_t *kept_scan[QK_KEPT_BUFFERS];

static uint8_t **kept_list(int64_t size) {
  return size == QK_COPY_PIECE ? kept_copy : size == QK_SCAN_PIECE ? kept_scan : NULL;
}

static uint8_t *range_buffer(const RangeJob *job) {
  uint8_t **kept = kept_list(job->piece_size);
  if (kept != NULL) {
    uint8_t *found = NULL;
    pthread_mutex_lock(&kept_lock);
    for (int i = 0; i < QK_KEPT_BUFFERS && found == NULL; i++) {
      if (kept[i] != NULL) {
        found = kept[i];
        kept[i] = NULL;
      }
    }
    pthread_mutex_unlock(&kept_lock);
    if (found != NULL) return found;
  }
  void *buffer = NULL;
  if (posix_memalign(&buffer, QK_BUFFER_ALIGNMENT, (size_t)job->piece_size) != 0) return NULL;
  return buffer;
}

static void range_buffer_done(const RangeJob *job, uint8_t *buffer) {
  uint8_t **kept = kept_list(job->piece_size);
  if (kept != NULL) {
    pthread_mutex_lock(&kept_lock);
    for (int i = 0; i < QK_KEPT_BUFFERS; i++) {
      if (kept[i] == NULL) {
        kept[i] = buffer;
        buffer = NULL;
        break;
      }
    }
    pthread_mutex_unlock(&kept_lock);
  }
  free(buffer);
}

/* The extra thread: its own buffer (allocated here, so on its core's memory), the same loop. When the
 * buffer cannot be had it just leaves the work to the other loop. */
static void *range_helper(void *data) {
  RangeJob *job = data;
  uint8_t *buffer = range_buffer(job);
  if (buffer == NULL) return NULL;
  range_loop(job, buffer);
  range_buffer_done(job, buffer);
  return NULL;
}

static void range_execute(napi_env env, void *data) {
  (void)env;
  RangeJob *job = data;
  uint8_t *buffer = range_buffer(job);
  if (buffer == NULL) {
    range_fail(job, ENOMEM, "posix_memalign", job->src_position);
    return;
  }
  pthread_t helper;
  bool helping = !job->single_thread && job->piece_count > 1 && pthread_create(&helper, NULL, range_helper, job) == 0;
  range_loop(job, buffer);
  if (helping) pthread_join(helper, NULL);
  range_buffer_done(job, buffer);
}

static void range_complete(napi_env env, napi_status status, void *data) {
  RangeJob *job = data;
  if (status != napi_ok) {
    napi_reject_deferred(env, job->deferred, make_system_error(env, EINTR, job->name));
  } else if (atomic_load(&job->failed) != 0) {
    napi_value error = make_system_error(env, job->error, job->syscall);
    napi_set_named_property(env, error, "position", number_value(env, (double)job->error_position));
    napi_reject_deferred(env, job->deferred, error);
  } else {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
  }
  if (job->flags_ref != NULL) napi_delete_reference(env, job->flags_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

/* Queue `job` (its range and piece fields set) and return its promise; an empty range resolves at once. */
static napi_value range_start(napi_env env, RangeJob *job, napi_value flags_value) {
  napi_value promise, resource_name;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    free(job);
    return NULL;
  }
  job->piece_count = (job->length + job->piece_size - 1) / job->piece_size;
  atomic_init(&job->next_piece, 0);
  atomic_init(&job->failed, 0);
  if (job->length == 0) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
    free(job);
    return promise;
  }
  /* The flags' memory is written on other threads: keep the array (and so its buffer) alive till then. */
  if (flags_value != NULL && napi_create_reference(env, flags_value, 1, &job->flags_ref) != napi_ok) {
    napi_reject_deferred(env, job->deferred, make_system_error(env, ENOMEM, job->name));
    free(job);
    return promise;
  }
  char resource[48];
  snprintf(resource, sizeof resource, "qcowkit:%s", job->name);
  napi_create_string_utf8(env, resource, NAPI_AUTO_LENGTH, &resource_name);
  if (napi_create_async_work(env, NULL, resource_name, range_execute, range_complete, job, &job->work) != napi_ok) {
    napi_reject_deferred(env, job->deferred, make_system_error(env, ENOMEM, job->name));
    if (job->flags_ref != NULL) napi_delete_reference(env, job->flags_ref);
    free(job);
    return promise;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_reject_deferred(env, job->deferred, make_system_error(env, ENOMEM, job->name));
    if (job->flags_ref != NULL) napi_delete_reference(env, job->flags_ref);
    napi_delete_async_work(env, job->work);
    free(job);
  }
  return promise;
}

/* A range that may be empty: position and length safe non-negative integers, position + length safe. */
static bool get_span(napi_env env, napi_value position_value, const char *what, napi_value length_value,
                     int64_t *position, int64_t *length) {
  if (!get_byte_count(env, position_value, what, position)) return false;
  if (!get_byte_count(env, length_value, "length", length)) return false;
  if ((double)*position + (double)*length > QK_MAX_SAFE) {
    char message[96];
    snprintf(message, sizeof message, "%s + length must stay below 2^53", what);
    napi_throw_range_error(env, "ERR_INVALID_ARG", message);
    return false;
  }
  return true;
}

/* True when [a, a + length) and [b, b + length) of the same file overlap (and are not the same range). */
static bool same_file_overlap(int src_fd, int64_t a, int dst_fd, int64_t b, int64_t length) {
  if (a == b) return false; /* each piece is read, then written back in place: any order is safe */
  if (a + length <= b || b + length <= a) return false;
  struct stat src_stats, dst_stats;
  if (fstat(src_fd, &src_stats) != 0 || fstat(dst_fd, &dst_stats) != 0) return false;
  return src_stats.st_dev == dst_stats.st_dev && src_stats.st_ino == dst_stats.st_ino;
}

/* copyRange(srcFd, srcPosition, dstFd, dstPosition, length) -> Promise<void>: the bytes of the source at
 * [srcPosition, srcPosition + length) written at dstPosition, past the source's end as zeros, growing the
 * destination like a write. Overlapping ranges of one file are copied as memmove does (one thread, in a
 * safe order). Rejects with { code, errno, syscall: "pread" | "pwrite", position } for the first failed
 * call (position: the byte of the file that call was on); bytes before it may be copied. */
/* The bytes of `value`, which must be a Uint8Array of one byte per 512-byte sector of `length` bytes;
 * NULL (with a JavaScript exception pending) otherwise. */
static uint8_t *sector_flags(napi_env env, napi_value value, int64_t length) {
  bool is_typed_array = false;
  napi_is_typedarray(env, value, &is_typed_array);
  napi_typedarray_type type;
  size_t elements = 0;
  void *data = NULL;
  if (!is_typed_array || napi_get_typedarray_info(env, value, &type, &elements, &data, NULL, NULL) != napi_ok ||
      type != napi_uint8_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "flags must be a Uint8Array");
    return NULL;
  }
  if ((uint64_t)elements != ((uint64_t)length + QK_SECTOR - 1) / QK_SECTOR) {
    napi_throw_range_error(env, "ERR_INVALID_ARG", "flags must hold one byte per 512-byte sector of the range");
    return NULL;
  }
  /* A zero-length array may have no data pointer; nothing is written through it then. */
  return data != NULL ? data : (uint8_t *)"";
}

/* copyRange(srcFd, srcPosition, dstFd, dstPosition, length[, flags]): with `flags`, each piece is also
 * scanned for zero sectors between its read and its write (one byte per 512-byte sector, as
 * scanZeroSectors), so a copy learns where its source is sparse without reading it twice. */
static napi_value copy_range(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t argc = 6;
  int src_fd, dst_fd;
  int64_t src_position, dst_position, length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 5) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "missing arguments");
    return NULL;
  }
  if (!get_fd(env, argv[0], &src_fd) ||
      !get_span(env, argv[1], "srcPosition", argv[4], &src_position, &length) || !get_fd(env, argv[2], &dst_fd) ||
      !get_span(env, argv[3], "dstPosition", argv[4], &dst_position, &length)) {
    return NULL;
  }
  napi_valuetype flags_type = napi_undefined;
  if (argc >= 6) napi_typeof(env, argv[5], &flags_type);
  uint8_t *flags = NULL;
  if (flags_type != napi_undefined) {
    flags = sector_flags(env, argv[5], length);
    if (flags == NULL) return NULL;
  }
  RangeJob *job = calloc(1, sizeof *job);
  if (job == NULL) return throw_system_error(env, ENOMEM, "copyRange");
  job->piece = copy_piece;
  job->name = "copyRange";
  job->src_fd = src_fd;
  job->dst_fd = dst_fd;
  job->src_position = src_position;
  job->dst_position = dst_position;
  job->length = length;
  job->piece_size = QK_COPY_PIECE;
  job->flags = flags;
  if (length > 0 && same_file_overlap(src_fd, src_position, dst_fd, dst_position, length)) {
    job->single_thread = true;
    job->backward = dst_position > src_position;
  }
  return range_start(env, job, flags != NULL ? argv[5] : NULL);
}

/* scanZeroSectors(fd, position, length, flags) -> Promise<void>: flags[i] = 1 when bytes
 * [position + 512 i, position + 512 (i + 1)) (the last sector may be partial) read as all zeros, else 0;
 * bytes past end of file are zeros. flags is a Uint8Array of exactly ceil(length / 512) bytes, written on
 * other threads until the promise settles. Rejects like copyRange (syscall "pread"). */
static napi_value scan_zero_sectors(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  int64_t position, length;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &fd) ||
      !get_span(env, argv[1], "position", argv[2], &position, &length)) {
    return NULL;
  }
  uint8_t *data = sector_flags(env, argv[3], length);
  if (data == NULL) return NULL;
  RangeJob *job = calloc(1, sizeof *job);
  if (job == NULL) return throw_system_error(env, ENOMEM, "scanZeroSectors");
  job->piece = scan_piece;
  job->name = "scanZeroSectors";
  job->src_fd = fd;
  job->dst_fd = -1;
  job->src_position = position;
  job->length = length;
  job->piece_size = QK_SCAN_PIECE;
  job->flags = data;
  return range_start(env, job, argv[3]);
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
      {"copyRange", NULL, copy_range, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scanZeroSectors", NULL, scan_zero_sectors, NULL, NULL, NULL, napi_enumerable, NULL},
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
