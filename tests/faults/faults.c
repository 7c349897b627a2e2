/*
 * faults.c: an LD_PRELOAD fault injector for the save tests of codex-store
 * (tests/tests/save_faults.rs).
 *
 * The tests run as root, where chmod cannot make a directory unwritable, and CI may not let them
 * mount a small file system. So instead of provoking real faults, this library wraps the libc
 * calls that Rust's std makes for the store's files and, when a rule matches, fails the call
 * with an errno, kills the process, or pauses it at exactly that point. Only the child process
 * whose environment names this library in LD_PRELOAD is affected (the test harness sets it on
 * the `codex-store` command only).
 *
 * Which libc entry points std uses (checked with `nm -D --undefined-only` on a probe binary and
 * strace, Rust 1.95, glibc 2.36):
 *   File::create, OpenOptions::open     -> open64         (the openat syscall)
 *   Write::write_all on a File          -> write
 *   FileExt::write_at / write_all_at    -> pwrite64
 *   File::set_len                       -> ftruncate64
 *   File::sync_all / File::sync_data    -> fsync / fdatasync
 *   fs::rename                          -> rename
 * open, openat(64), pwrite, writev, fallocate(64), posix_fallocate(64), ftruncate, renameat and
 * renameat2 are wrapped as well, for code that calls libc directly.
 *
 * Configuration, all from the environment:
 *   CODEX_FAULTS=RULE[;RULE...]  the rules; without it every call goes straight through.
 *   CODEX_FAULTS_DIR=DIR         where the log and the pause handshake files go (a directory
 *                                outside the tested one). Needed for PAUSE; optional otherwise.
 *   CODEX_FAULTS_PAUSE_SECS=N    the bound on one PAUSE (default 60).
 *
 * A rule is OPS:PATTERN:ACTION[:QUALIFIERS]
 *   OPS      comma-separated classes of calls, or `*` for all:
 *              open      every open/open64/openat/openat64
 *              create    an open with O_CREAT (or O_TMPFILE) whose file does not exist yet: what
 *                        an unwritable directory (EACCES) or a full inode table (ENOSPC) refuses
 *              write     write, writev, pwrite, pwrite64
 *              fallocate fallocate(64), posix_fallocate(64)
 *              truncate  ftruncate(64)
 *              fsync     fsync, fdatasync
 *              rename    rename, renameat, renameat2 (the pattern may match either name)
 *   PATTERN  a substring of the absolute path the call acts on (fd-based calls are resolved
 *            through /proc/self/fd). A trailing `$` anchors it at the end of the path. Empty
 *            matches everything. It cannot contain `:` or `;`.
 *   ACTION   an errno name (EACCES, EPERM, ENOSPC, EDQUOT, EIO, EROFS, ...): the call fails with
 *            it, without being made;
 *            KILL: SIGKILL the process (a real crash, at exactly that point);
 *            PAUSE: create DIR/paused.<rule>.<n>, wait until DIR/go.<rule>.<n> exists (bounded by
 *            CODEX_FAULTS_PAUSE_SECS, then go on and log `pause-timeout`), then make the call;
 *            MARK: do nothing but log and arm (see `armed`).
 *   QUALIFIERS, comma-separated (a rule counts the calls that pass its OPS, PATTERN, `doc` and
 *   `armed` filters, 1-based):
 *            nth=N    act on the Nth such call only
 *            first=K  act on the first K only
 *            from=N   act on the Nth and every later one
 *            doc      only when the file already starts with `{` (a JSON document, as opposed
 *                     to a reservation filled with spaces): "after the answer was written"
 *            armed    only once some rule has acted earlier in this process
 *            after    make the real call first, then act (an errno then replaces the result)
 * Rules are tried in order; the first one that acts decides (MARK rules act and let later rules
 * be tried too).
 *
 * Each action appends one line to DIR/log (when DIR is set) before it happens:
 *   fired rule=<i> n=<count> call=<name> action=<ACTION> pid=<pid> path=<path>
 *
 * Example: `fsync:/.auth.json.codex-store-rotation.:EIO:doc,nth=1` fails the first fsync of a
 * rotation file that holds a document, i.e. the first one after the refresh answer.
 */

#define _GNU_SOURCE
#undef _FORTIFY_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Rules
 * ------------------------------------------------------------------------------------------- */

enum {
    OP_OPEN = 1 << 0,
    OP_CREATE = 1 << 1,
    OP_WRITE = 1 << 2,
    OP_FALLOCATE = 1 << 3,
    OP_TRUNCATE = 1 << 4,
    OP_FSYNC = 1 << 5,
    OP_RENAME = 1 << 6,
};

/* Actions other than an errno (errnos are positive). */
enum { ACT_KILL = -1, ACT_PAUSE = -2, ACT_MARK = -3 };

#define MAX_RULES 16

struct rule {
    unsigned ops;
    char pattern[PATH_MAX];
    int anchored;           /* the pattern ended with `$` */
    int action;             /* an errno, or ACT_* */
    char action_name[16];
    long nth, first, from;  /* 0: not given */
    int doc, armed, after;
    long count;             /* calls that passed the filters (atomic) */
};

static struct rule rules[MAX_RULES];
static int nrules;
static char faults_dir[PATH_MAX];
static long pause_secs = 60;
/* Set once any rule has acted: what `armed` rules wait for. */
static int armed_latch;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const struct { const char *name; int value; } errnos[] = {
    {"EACCES", EACCES}, {"EPERM", EPERM},   {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT},
    {"EIO", EIO},       {"EROFS", EROFS},   {"EMFILE", EMFILE}, {"ENFILE", ENFILE},
    {"EXDEV", EXDEV},   {"EBUSY", EBUSY},   {"EINTR", EINTR},   {"EAGAIN", EAGAIN},
    {"ENOENT", ENOENT}, {"EEXIST", EEXIST}, {"EFBIG", EFBIG},
};

static const struct { const char *name; unsigned bits; } op_names[] = {
    {"open", OP_OPEN},         {"create", OP_CREATE},     {"write", OP_WRITE},
    {"fallocate", OP_FALLOCATE}, {"truncate", OP_TRUNCATE}, {"fsync", OP_FSYNC},
    {"rename", OP_RENAME},     {"*", ~0u},
};

/* A bad configuration must fail the test loudly, not silently test nothing. */
static void die_config(int index, const char *what, const char *text) {
    fprintf(stderr, "codex-faults: CODEX_FAULTS rule %d: %s: %s\n", index, what, text);
    _exit(86);
}

static int parse_action(const char *s, int index) {
    if (strcmp(s, "KILL") == 0) return ACT_KILL;
    if (strcmp(s, "PAUSE") == 0) return ACT_PAUSE;
    if (strcmp(s, "MARK") == 0) return ACT_MARK;
    for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++)
        if (strcmp(s, errnos[i].name) == 0) return errnos[i].value;
    die_config(index, "unknown action", s);
    return 0;
}

static unsigned parse_ops(char *s, int index) {
    unsigned bits = 0;
    for (char *save = NULL, *op = strtok_r(s, ",", &save); op; op = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < sizeof op_names / sizeof op_names[0] && strcmp(op, op_names[i].name) != 0) i++;
        if (i == sizeof op_names / sizeof op_names[0]) die_config(index, "unknown call class", op);
        bits |= op_names[i].bits;
    }
    if (!bits) die_config(index, "no call class", s);
    return bits;
}

static long parse_count(const char *s, int index) {
    char *end;
    long n = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || n < 1) die_config(index, "not a count >= 1", s);
    return n;
}

static void parse_qualifiers(struct rule *r, char *s, int index) {
    for (char *save = NULL, *q = strtok_r(s, ",", &save); q; q = strtok_r(NULL, ",", &save)) {
        if (strncmp(q, "nth=", 4) == 0) r->nth = parse_count(q + 4, index);
        else if (strncmp(q, "first=", 6) == 0) r->first = parse_count(q + 6, index);
        else if (strncmp(q, "from=", 5) == 0) r->from = parse_count(q + 5, index);
        else if (strcmp(q, "doc") == 0) r->doc = 1;
        else if (strcmp(q, "armed") == 0) r->armed = 1;
        else if (strcmp(q, "after") == 0) r->after = 1;
        else die_config(index, "unknown qualifier", q);
    }
}

static void parse_rule(char *text, int index) {
    if (nrules == MAX_RULES) die_config(index, "too many rules", text);
    struct rule *r = &rules[nrules++];
    char *fields[4] = {0};
    int n = 0;
    for (char *p = text; n < 4; n++) {
        fields[n] = p;
        char *colon = strchr(p, ':');
        if (!colon) { n++; break; }
        *colon = '\0';
        p = colon + 1;
    }
    if (n < 3) die_config(index, "want OPS:PATTERN:ACTION[:QUALIFIERS]", text);
    r->ops = parse_ops(fields[0], index);
    size_t len = strlen(fields[1]);
    if (len >= sizeof r->pattern) die_config(index, "pattern too long", fields[1]);
    memcpy(r->pattern, fields[1], len + 1);
    if (len > 0 && r->pattern[len - 1] == '$') {
        r->pattern[len - 1] = '\0';
        r->anchored = 1;
    }
    r->action = parse_action(fields[2], index);
    snprintf(r->action_name, sizeof r->action_name, "%s", fields[2]);
    if (n == 4) parse_qualifiers(r, fields[3], index);
}

static void load_rules(void) {
    const char *dir = getenv("CODEX_FAULTS_DIR");
    if (dir) snprintf(faults_dir, sizeof faults_dir, "%s", dir);
    const char *secs = getenv("CODEX_FAULTS_PAUSE_SECS");
    if (secs) pause_secs = parse_count(secs, 0);
    const char *spec = getenv("CODEX_FAULTS");
    if (!spec || !*spec) return;
    char *copy = strdup(spec);
    if (!copy) die_config(0, "out of memory", spec);
    int index = 0;
    for (char *save = NULL, *t = strtok_r(copy, ";", &save); t; t = strtok_r(NULL, ";", &save))
        parse_rule(t, ++index);
    free(copy);
    for (int i = 0; i < nrules; i++)
        if (rules[i].action == ACT_PAUSE && !faults_dir[0])
            die_config(i + 1, "PAUSE needs CODEX_FAULTS_DIR", rules[i].action_name);
}

static int have_rules(void) {
    pthread_once(&once, load_rules);
    return nrules > 0;
}

/* Reads the rules at load time too, so that a bad configuration stops even a process that never
   makes a wrapped call. */
__attribute__((constructor)) static void init(void) {
    have_rules();
}

/* ---------------------------------------------------------------------------------------------
 * The real functions (the next definition after this library, normally libc's)
 * ------------------------------------------------------------------------------------------- */

/* Declares `real_NAME`, looked up once (a benign race: every thread finds the same pointer). */
#define REAL(name)                                                                           \
    static __typeof__(&name) real_##name;                                                    \
    if (!__atomic_load_n(&real_##name, __ATOMIC_ACQUIRE))                                    \
        __atomic_store_n(&real_##name, (__typeof__(&name))dlsym(RTLD_NEXT, #name),          \
                         __ATOMIC_RELEASE);                                                  \
    if (!real_##name) {                                                                      \
        errno = ENOSYS;                                                                      \
        return -1;                                                                           \
    }

/* Our own file access (log, handshake, `doc`) must not go through the wrappers. */
static int raw_open(const char *path, int flags, mode_t mode) {
    REAL(open);
    return real_open(path, flags, mode);
}

static ssize_t raw_write(int fd, const void *buf, size_t len) {
    REAL(write);
    return real_write(fd, buf, len);
}

/* ---------------------------------------------------------------------------------------------
 * Paths
 * ------------------------------------------------------------------------------------------- */

static void fd_path(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    out[n > 0 ? (size_t)n : 0] = '\0';
}

/* The absolute path a (dirfd, path) pair names, without resolving symlinks. */
static void at_path(int dirfd, const char *path, char *out, size_t size) {
    if (!path) { out[0] = '\0'; return; }
    if (path[0] == '/') { snprintf(out, size, "%s", path); return; }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) base[0] = '\0';
    } else {
        fd_path(dirfd, base, sizeof base);
    }
    snprintf(out, size, "%s/%s", base, path);
}

static int path_matches(const struct rule *r, const char *path) {
    if (!path || !path[0]) return 0;
    if (!r->anchored) return strstr(path, r->pattern) != NULL;
    size_t lp = strlen(path), lr = strlen(r->pattern);
    return lp >= lr && strcmp(path + lp - lr, r->pattern) == 0;
}

/* Whether the file at `path` (for an fd: /proc/self/fd/N, which works for write-only fds too)
   starts with `{`. */
static int holds_document(const char *path) {
    int saved = errno;
    int fd = raw_open(path, O_RDONLY | O_CLOEXEC, 0);
    char c = 0;
    int yes = fd >= 0 && pread(fd, &c, 1, 0) == 1 && c == '{';
    if (fd >= 0) close(fd);
    errno = saved;
    return yes;
}

/* ---------------------------------------------------------------------------------------------
 * Deciding and acting
 * ------------------------------------------------------------------------------------------- */

static void log_line(const char *fmt, ...) {
    if (!faults_dir[0]) return;
    char path[PATH_MAX + 8], line[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/log", faults_dir);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (len < 0) return;
    if ((size_t)len >= sizeof line) len = sizeof line - 1;
    int fd = raw_open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    /* One write with O_APPEND: lines of concurrent threads do not interleave. */
    if (raw_write(fd, line, (size_t)len) < 0) { /* nothing to do: the log is best effort */ }
    close(fd);
}

static void pause_here(int index, long n) {
    char ready[PATH_MAX + 64], go[PATH_MAX + 64];
    snprintf(ready, sizeof ready, "%s/paused.%d.%ld", faults_dir, index, n);
    snprintf(go, sizeof go, "%s/go.%d.%ld", faults_dir, index, n);
    int fd = raw_open(ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
    struct timespec tick = {0, 1000 * 1000}; /* 1 ms */
    for (long waited = 0; access(go, F_OK) != 0; waited++) {
        if (waited >= pause_secs * 1000) {
            log_line("pause-timeout rule=%d n=%ld pid=%d\n", index, n, (int)getpid());
            return;
        }
        nanosleep(&tick, NULL);
    }
}

/* A rule that acts on a call, with the count it acted at. */
struct verdict {
    struct rule *rule;
    long n;
};

/* Runs the rules over one call: `ops` its classes, `path` (and `path2` for a rename) what it
   acts on, `docpath` what to look into for `doc`. Logs and latches every rule that acts;
   returns the first one that is not a MARK. */
static struct verdict consult(const char *call, unsigned ops, const char *path, const char *path2,
                              const char *docpath) {
    struct verdict v = {NULL, 0};
    int armed = __atomic_load_n(&armed_latch, __ATOMIC_SEQ_CST); /* as it was before this call */
    for (int i = 0; i < nrules && !v.rule; i++) {
        struct rule *r = &rules[i];
        if (!(r->ops & ops)) continue;
        if (!path_matches(r, path) && !path_matches(r, path2)) continue;
        if (r->armed && !armed) continue;
        if (r->doc && !holds_document(docpath)) continue;
        long n = __atomic_add_fetch(&r->count, 1, __ATOMIC_SEQ_CST);
        if ((r->nth && n != r->nth) || (r->first && n > r->first) || (r->from && n < r->from))
            continue;
        log_line("fired rule=%d n=%ld call=%s action=%s pid=%d path=%s%s%s\n", i + 1, n, call,
                 r->action_name, (int)getpid(), path, path2 ? " to=" : "", path2 ? path2 : "");
        __atomic_store_n(&armed_latch, 1, __ATOMIC_SEQ_CST);
        if (r->action != ACT_MARK) {
            v.rule = r;
            v.n = n;
        }
    }
    return v;
}

/* Carries out a verdict. Returns 0 to go on, or the errno the call must fail with. */
static int act(struct verdict v) {
    switch (v.rule->action) {
    case ACT_KILL:
        kill(getpid(), SIGKILL);
        for (;;) pause();
    case ACT_PAUSE:
        pause_here((int)(v.rule - rules) + 1, v.n);
        return 0;
    default:
        return v.rule->action;
    }
}

/* The two halves of every wrapper: before the real call (an errno or KILL stops it there) and
   after it (for `after` rules). Both keep errno intact when they do not fail the call. */
static int before(struct verdict v) {
    if (!v.rule || v.rule->after) return 0;
    int saved = errno, e = act(v);
    errno = saved;
    return e;
}

static long after(struct verdict v, long result) {
    if (!v.rule || !v.rule->after) return result;
    int saved = errno, e = act(v);
    if (e) {
        errno = e;
        return -1;
    }
    errno = saved;
    return result;
}

/* The verdict for a call on an open file descriptor. */
static struct verdict consult_fd(const char *call, unsigned ops, int fd) {
    char path[PATH_MAX], proc[64];
    fd_path(fd, path, sizeof path);
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    return consult(call, ops, path, NULL, proc);
}

/* ---------------------------------------------------------------------------------------------
 * open
 * ------------------------------------------------------------------------------------------- */

static struct verdict consult_open(const char *call, int dirfd, const char *path, int flags) {
    char abs[PATH_MAX];
    at_path(dirfd, path, abs, sizeof abs);
    unsigned ops = OP_OPEN;
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
        struct stat st;
        int saved = errno;
        if ((flags & O_TMPFILE) == O_TMPFILE ||
            (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT))
            ops |= OP_CREATE;
        errno = saved;
    }
    return consult(call, ops, abs, NULL, abs);
}

/* The mode argument exists only with O_CREAT or O_TMPFILE. */
#define OPEN_MODE(flags, last)                                                               \
    mode_t mode = 0;                                                                         \
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {                             \
        va_list ap;                                                                          \
        va_start(ap, last);                                                                  \
        mode = (mode_t)va_arg(ap, int);                                                      \
        va_end(ap);                                                                          \
    }

/* An `after` errno on a successful open closes the descriptor it would have returned. */
static int open_after(struct verdict v, int fd) {
    int r = (int)after(v, fd);
    if (r < 0 && fd >= 0) {
        int saved = errno;
        close(fd);
        errno = saved;
    }
    return r;
}

#define DEFINE_OPEN(name)                                                                    \
    int name(const char *path, int flags, ...) {                                             \
        OPEN_MODE(flags, flags)                                                              \
        REAL(name);                                                                          \
        if (!have_rules()) return real_##name(path, flags, mode);                            \
        struct verdict v = consult_open(#name, AT_FDCWD, path, flags);                       \
        int e = before(v);                                                                   \
        if (e) { errno = e; return -1; }                                                     \
        return open_after(v, real_##name(path, flags, mode));                                \
    }

#define DEFINE_OPENAT(name)                                                                  \
    int name(int dirfd, const char *path, int flags, ...) {                                  \
        OPEN_MODE(flags, flags)                                                              \
        REAL(name);                                                                          \
        if (!have_rules()) return real_##name(dirfd, path, flags, mode);                     \
        struct verdict v = consult_open(#name, dirfd, path, flags);                          \
        int e = before(v);                                                                   \
        if (e) { errno = e; return -1; }                                                     \
        return open_after(v, real_##name(dirfd, path, flags, mode));                         \
    }

DEFINE_OPEN(open)
DEFINE_OPEN(open64)
DEFINE_OPENAT(openat)
DEFINE_OPENAT(openat64)

/* ---------------------------------------------------------------------------------------------
 * write, fallocate, truncate, fsync: calls on a descriptor
 * ------------------------------------------------------------------------------------------- */

/* Defines NAME(PARAMS) returning TYPE that consults the rules for descriptor `fd` as OPS. */
#define DEFINE_FD_CALL(type, name, ops, params, args)                                        \
    type name params {                                                                       \
        REAL(name);                                                                          \
        if (!have_rules()) return real_##name args;                                          \
        struct verdict v = consult_fd(#name, ops, fd);                                       \
        int e = before(v);                                                                   \
        if (e) { errno = e; return -1; }                                                     \
        return (type)after(v, (long)real_##name args);                                       \
    }

DEFINE_FD_CALL(ssize_t, write, OP_WRITE, (int fd, const void *buf, size_t n), (fd, buf, n))
DEFINE_FD_CALL(ssize_t, writev, OP_WRITE, (int fd, const struct iovec *iov, int cnt),
               (fd, iov, cnt))
DEFINE_FD_CALL(ssize_t, pwrite, OP_WRITE, (int fd, const void *buf, size_t n, off_t off),
               (fd, buf, n, off))
DEFINE_FD_CALL(ssize_t, pwrite64, OP_WRITE, (int fd, const void *buf, size_t n, off64_t off),
               (fd, buf, n, off))
DEFINE_FD_CALL(int, fallocate, OP_FALLOCATE, (int fd, int mode, off_t off, off_t len),
               (fd, mode, off, len))
DEFINE_FD_CALL(int, fallocate64, OP_FALLOCATE, (int fd, int mode, off64_t off, off64_t len),
               (fd, mode, off, len))
DEFINE_FD_CALL(int, ftruncate, OP_TRUNCATE, (int fd, off_t len), (fd, len))
DEFINE_FD_CALL(int, ftruncate64, OP_TRUNCATE, (int fd, off64_t len), (fd, len))
DEFINE_FD_CALL(int, fsync, OP_FSYNC, (int fd), (fd))
DEFINE_FD_CALL(int, fdatasync, OP_FSYNC, (int fd), (fd))

/* posix_fallocate returns the error number instead of setting errno. */
#define DEFINE_POSIX_FALLOCATE(name, off_type)                                               \
    int name(int fd, off_type off, off_type len) {                                           \
        static __typeof__(&name) real;                                                       \
        if (!real) real = (__typeof__(&name))dlsym(RTLD_NEXT, #name);                        \
        if (!real) return ENOSYS;                                                            \
        if (!have_rules()) return real(fd, off, len);                                        \
        struct verdict v = consult_fd(#name, OP_FALLOCATE, fd);                              \
        int e = before(v);                                                                   \
        if (e) return e;                                                                     \
        int r = real(fd, off, len);                                                          \
        errno = r;                                                                           \
        return after(v, r) < 0 ? errno : r;                                                  \
    }

DEFINE_POSIX_FALLOCATE(posix_fallocate, off_t)
DEFINE_POSIX_FALLOCATE(posix_fallocate64, off64_t)

/* ---------------------------------------------------------------------------------------------
 * rename
 * ------------------------------------------------------------------------------------------- */

static struct verdict consult_rename(const char *call, int olddirfd, const char *old, int newdirfd,
                                     const char *new) {
    char from[PATH_MAX], to[PATH_MAX];
    at_path(olddirfd, old, from, sizeof from);
    at_path(newdirfd, new, to, sizeof to);
    return consult(call, OP_RENAME, from, to, from);
}

int rename(const char *old, const char *new) {
    REAL(rename);
    if (!have_rules()) return real_rename(old, new);
    struct verdict v = consult_rename("rename", AT_FDCWD, old, AT_FDCWD, new);
    int e = before(v);
    if (e) { errno = e; return -1; }
    return (int)after(v, real_rename(old, new));
}

int renameat(int olddirfd, const char *old, int newdirfd, const char *new) {
    REAL(renameat);
    if (!have_rules()) return real_renameat(olddirfd, old, newdirfd, new);
    struct verdict v = consult_rename("renameat", olddirfd, old, newdirfd, new);
    int e = before(v);
    if (e) { errno = e; return -1; }
    return (int)after(v, real_renameat(olddirfd, old, newdirfd, new));
}

int renameat2(int olddirfd, const char *old, int newdirfd, const char *new, unsigned flags) {
    REAL(renameat2);
    if (!have_rules()) return real_renameat2(olddirfd, old, newdirfd, new, flags);
    struct verdict v = consult_rename("renameat2", olddirfd, old, newdirfd, new);
    int e = before(v);
    if (e) { errno = e; return -1; }
    return (int)after(v, real_renameat2(olddirfd, old, newdirfd, new, flags));
}
