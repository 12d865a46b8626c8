/*
 * faultfs: a FUSE passthrough that fails, delays or corrupts chosen operations.
 *
 * The test suite builds and mounts it (tests/support/faultfs.py says how to use
 * it); nothing of stor's depends on it.
 *
 *   faultfs BACKING MOUNTPOINT -f -o rules=FILE,events=FILE[,allow_other,...]
 *
 * Every operation is done on BACKING (through a directory fd and the *at()
 * calls), as the calling process's user: the thread that serves a request takes
 * the caller's fsuid, fsgid and supplementary groups (per-thread syscalls) and
 * gives them back after, so owners, modes and permission checks are those of the
 * backing filesystem.  The daemon's umask is 0: the kernel has already applied the
 * caller's.
 *
 * Rules come from FILE, re-read whenever its mtime or size changes, and at every
 * operation while its mtime is under 2 s old (the check is made at the start of
 * every operation).  Write it whole and rename it into place.  One rule a line, fields separated by one space:
 *
 *   fail  ID OP ERRNO COUNT AT GLOB   answer -ERRNO instead of doing OP
 *   delay ID OP MILLIS COUNT AT GLOB  wait MILLIS ms, then do OP
 *   flip  ID OFFSET MASK COUNT GLOB   XOR MASK into the byte at file offset OFFSET
 *                                     (-1: every byte) of what a read returns
 *
 * AT (-1: any) limits a read or write rule to the requests whose byte range holds
 * file offset AT.  COUNT is how many times the rule fires (-1: unlimited); a rule keeps its count
 * across re-reads as long as its ID stays.  GLOB is matched with fnmatch(3)
 * without FNM_PATHNAME against the path below the mount ("/aa/bb/file"), so "*"
 * also matches "/".  A rename matches on either of its paths.  OP is one of
 * read write fsync fsyncdir rename statfs open create mkdir unlink rmdir getattr
 * truncate chmod chown link fallocate.
 * A delay sleeps in slices of 10 ms and ends early when its rule is removed.
 *
 * Each time a rule fires a line "KIND OP PATH" is appended to the events FILE,
 * and "ready" is appended once the kernel has initialised the mount.
 *
 * Page cache: every open is done with keep_cache=0 (the kernel drops the file's
 * cached pages at open), attributes and entries are never cached (timeouts 0),
 * and an open made while a read or flip rule matches the path is done with
 * direct_io, so those reads reach this process whatever was cached.  The mount
 * option "direct_io" makes every open direct.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <fuse.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

static int backing_fd = -1;
static const char *backing_path;
static const char *mount_path;

/* -- options ---------------------------------------------------------------- */

struct options {
	char *rules;
	char *events;
	int direct_io;
};
static struct options options;

#define OPTION(t, p) { t, offsetof(struct options, p), 1 }
static const struct fuse_opt option_spec[] = {
	OPTION("rules=%s", rules),
	OPTION("events=%s", events),
	OPTION("direct_io", direct_io),
	FUSE_OPT_END
};

/* -- rules ------------------------------------------------------------------ */

enum kind { FAIL, DELAY, FLIP };

struct rule {
	enum kind kind;
	long id;
	char op[16];
	long value;     /* errno, milliseconds, or offset */
	long mask;      /* flip only */
	long count;     /* remaining firings, -1 unlimited */
	long at;        /* fail/delay: only requests covering this offset (-1: any) */
	char glob[PATH_MAX];
};

#define MAX_RULES 64
static struct rule rules[MAX_RULES];
static int nrules;
static struct timespec rules_mtime;
static off_t rules_size = -1;
static pthread_mutex_t rules_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;

static void event(const char *kind, const char *op, const char *path)
{
	if (!options.events)
		return;
	pthread_mutex_lock(&events_lock);
	int fd = open(options.events, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0) {
		char line[PATH_MAX + 64];
		int n = snprintf(line, sizeof line, "%s %s %s\n", kind, op, path ? path : "-");
		if (n > 0 && write(fd, line, (size_t)n) < 0) {
			/* nothing to do: the events file is a convenience */
		}
		close(fd);
	}
	pthread_mutex_unlock(&events_lock);
}

/* Re-read the rules file if it changed; called with rules_lock held. */
static void reload_locked(void)
{
	struct stat st;
	if (!options.rules)
		return;
	if (stat(options.rules, &st) != 0) {
		nrules = 0;
		rules_size = -1;
		return;
	}
	/* unchanged, unless written within the last 2 s: file times are coarse (a
	 * jiffy), so two rewrites in one tick can look alike ("racy git") */
	if (st.st_mtim.tv_sec == rules_mtime.tv_sec && st.st_mtim.tv_nsec == rules_mtime.tv_nsec
	    && st.st_size == rules_size && time(NULL) > st.st_mtim.tv_sec + 2)
		return;
	FILE *f = fopen(options.rules, "re");
	if (!f)
		return;
	struct rule fresh[MAX_RULES];
	int n = 0;
	char line[PATH_MAX + 128];
	while (n < MAX_RULES && fgets(line, sizeof line, f)) {
		struct rule r;
		char kind[16];
		int used = 0;
		memset(&r, 0, sizeof r);
		line[strcspn(line, "\n")] = 0;
		if (sscanf(line, "%15s", kind) != 1)
			continue;
		if (strcmp(kind, "flip") == 0) {
			r.kind = FLIP;
			strcpy(r.op, "read");
			if (sscanf(line, "%*s %ld %ld %ld %ld %n", &r.id, &r.value, &r.mask, &r.count,
				   &used) < 4 || !used)
				continue;
		} else {
			if (strcmp(kind, "fail") == 0)
				r.kind = FAIL;
			else if (strcmp(kind, "delay") == 0)
				r.kind = DELAY;
			else
				continue;
			if (sscanf(line, "%*s %ld %15s %ld %ld %ld %n", &r.id, r.op, &r.value, &r.count,
				   &r.at, &used) < 5 || !used)
				continue;
		}
		snprintf(r.glob, sizeof r.glob, "%s", line + used);
		/* a rule already known keeps what it has used of its count */
		for (int i = 0; i < nrules; i++)
			if (rules[i].id == r.id && rules[i].kind == r.kind)
				r.count = rules[i].count;
		fresh[n++] = r;
	}
	fclose(f);
	memcpy(rules, fresh, sizeof(struct rule) * (size_t)n);
	nrules = n;
	rules_mtime = st.st_mtim;
	rules_size = st.st_size;
}

static int matches(const struct rule *r, const char *op, const char *path, const char *path2)
{
	if (r->count == 0 || strcmp(r->op, op) != 0)
		return 0;
	if (path && fnmatch(r->glob, path, 0) == 0)
		return 1;
	if (path2 && fnmatch(r->glob, path2, 0) == 0)
		return 1;
	return 0;
}

/* Is the delay rule with this id still there (used up or not)? */
static int still_there(long id)
{
	int found = 0;
	pthread_mutex_lock(&rules_lock);
	reload_locked();
	for (int i = 0; i < nrules; i++)
		if (rules[i].id == id && rules[i].kind == DELAY)
			found = 1;
	pthread_mutex_unlock(&rules_lock);
	return found;
}

/*
 * The fault for `op` on `path` (and `path2`, a rename's target): 0 to go on, or
 * -errno to answer.  Delays are served here (outside the lock).
 */
static int fault_at(const char *op, const char *path, const char *path2, off_t off, size_t size)
{
	long delay_ms = 0, delay_id = -1;
	int err = 0;
	pthread_mutex_lock(&rules_lock);
	reload_locked();
	for (int i = 0; i < nrules; i++) {
		struct rule *r = &rules[i];
		if (r->kind == FLIP || !matches(r, op, path, path2))
			continue;
		if (r->at >= 0 && (off < 0 || r->at < off || r->at >= off + (off_t)size))
			continue;
		if (r->kind == DELAY && delay_id < 0) {
			delay_ms = r->value;
			delay_id = r->id;
			if (r->count > 0)
				r->count--;
		} else if (r->kind == FAIL && !err) {
			err = (int)r->value;
			if (r->count > 0)
				r->count--;
		}
	}
	pthread_mutex_unlock(&rules_lock);
	if (delay_id >= 0) {
		event("delay", op, path);
		struct timespec slice = { 0, 10 * 1000 * 1000 };
		for (long waited = 0; waited < delay_ms; waited += 10) {
			if (!still_there(delay_id) && waited > 0)
				break;
			nanosleep(&slice, NULL);
		}
	}
	if (err) {
		event("fail", op, path);
		return -err;
	}
	return 0;
}

static int fault(const char *op, const char *path, const char *path2)
{
	return fault_at(op, path, path2, -1, 0);
}

/* Would a read of `path` be failed, delayed or flipped now? */
static int read_rule_active(const char *path)
{
	int active = 0;
	pthread_mutex_lock(&rules_lock);
	reload_locked();
	for (int i = 0; i < nrules; i++)
		if (matches(&rules[i], "read", path, NULL))
			active = 1;
	pthread_mutex_unlock(&rules_lock);
	return active;
}

static void flip(const char *path, char *buf, size_t size, off_t offset)
{
	int flipped = 0;
	pthread_mutex_lock(&rules_lock);
	reload_locked();
	for (int i = 0; i < nrules; i++) {
		struct rule *r = &rules[i];
		if (r->kind != FLIP || !matches(r, "read", path, NULL))
			continue;
		if (r->value < 0) {
			for (size_t j = 0; j < size; j++)
				buf[j] ^= (char)r->mask;
		} else if (r->value >= offset && r->value < offset + (off_t)size) {
			buf[r->value - offset] ^= (char)r->mask;
		} else {
			continue;
		}
		flipped = 1;
		if (r->count > 0)
			r->count--;
	}
	pthread_mutex_unlock(&rules_lock);
	if (flipped)
		event("flip", "read", path);
}

/* -- acting as the caller --------------------------------------------------- */

struct identity {
	int switched;
};

static void become_caller(struct identity *id)
{
	struct fuse_context *ctx = fuse_get_context();
	id->switched = 0;
	if (!ctx || ctx->uid == 0)
		return;  /* root: keep the capabilities root has */
	gid_t groups[64];
	int n = fuse_getgroups(64, groups);
	if (n < 0 || n > 64)
		n = 0;
	/* the raw syscalls act on this thread only (glibc's wrappers act on all) */
	syscall(SYS_setgroups, n, groups);
	setfsgid(ctx->gid);
	setfsuid(ctx->uid);
	id->switched = 1;
}

static void become_self(struct identity *id)
{
	if (!id->switched)
		return;
	setfsuid(0);
	setfsgid(0);
	syscall(SYS_setgroups, 0, NULL);
}

#define AS_CALLER struct identity who_ __attribute__((cleanup(become_self))); become_caller(&who_)

/* "/a/b" → "a/b"; "/" → "." */
static const char *rel(const char *path)
{
	while (*path == '/')
		path++;
	return *path ? path : ".";
}

#define CHECK(op, path) do { int f_ = fault(op, path, NULL); if (f_) return f_; } while (0)

/* -- operations ------------------------------------------------------------- */

static void *ffs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->hard_remove = 1;    /* an unlinked open file stays readable through its fh */
	cfg->nullpath_ok = 0;
	cfg->kernel_cache = 0;
	cfg->auto_cache = 0;
	cfg->direct_io = options.direct_io;
	event("ready", "-", mount_path);
	return NULL;
}

static int ffs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	AS_CALLER;
	CHECK("getattr", path);
	int r = fi ? fstat((int)fi->fh, st) : fstatat(backing_fd, rel(path), st, AT_SYMLINK_NOFOLLOW);
	return r == 0 ? 0 : -errno;
}

static int ffs_readlink(const char *path, char *buf, size_t size)
{
	AS_CALLER;
	ssize_t n = readlinkat(backing_fd, rel(path), buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}

struct dir {
	DIR *dp;
	int fd;
};

static int ffs_opendir(const char *path, struct fuse_file_info *fi)
{
	AS_CALLER;
	int fd = openat(backing_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct dir *d = calloc(1, sizeof *d);
	d->fd = dup(fd);
	d->dp = fdopendir(fd);
	if (!d->dp) {
		int e = errno;
		close(fd);
		close(d->fd);
		free(d);
		return -e;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	return 0;
}

static int ffs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset,
		       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)path;
	(void)flags;
	AS_CALLER;
	struct dir *d = (struct dir *)(uintptr_t)fi->fh;
	if (offset == 0)
		rewinddir(d->dp);
	else
		seekdir(d->dp, offset);
	struct dirent *e;
	while ((errno = 0, e = readdir(d->dp)) != NULL) {
		struct stat st;
		memset(&st, 0, sizeof st);
		st.st_ino = e->d_ino;
		st.st_mode = (mode_t)DTTOIF(e->d_type);
		if (filler(buf, e->d_name, &st, e->d_off, 0))
			break;
	}
	return errno ? -errno : 0;
}

static int ffs_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	struct dir *d = (struct dir *)(uintptr_t)fi->fh;
	closedir(d->dp);
	close(d->fd);
	free(d);
	return 0;
}

static int ffs_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
	AS_CALLER;
	CHECK("fsyncdir", path);
	struct dir *d = (struct dir *)(uintptr_t)fi->fh;
	int r = datasync ? fdatasync(d->fd) : fsync(d->fd);
	return r == 0 ? 0 : -errno;
}

static int ffs_mkdir(const char *path, mode_t mode)
{
	AS_CALLER;
	CHECK("mkdir", path);
	return mkdirat(backing_fd, rel(path), mode) == 0 ? 0 : -errno;
}

static int ffs_unlink(const char *path)
{
	AS_CALLER;
	CHECK("unlink", path);
	return unlinkat(backing_fd, rel(path), 0) == 0 ? 0 : -errno;
}

static int ffs_rmdir(const char *path)
{
	AS_CALLER;
	CHECK("rmdir", path);
	return unlinkat(backing_fd, rel(path), AT_REMOVEDIR) == 0 ? 0 : -errno;
}

static int ffs_symlink(const char *target, const char *path)
{
	AS_CALLER;
	return symlinkat(target, backing_fd, rel(path)) == 0 ? 0 : -errno;
}

static int ffs_rename(const char *from, const char *to, unsigned int flags)
{
	AS_CALLER;
	int f = fault("rename", from, to);
	if (f)
		return f;
	long r = syscall(SYS_renameat2, backing_fd, rel(from), backing_fd, rel(to), flags);
	return r == 0 ? 0 : -errno;
}

static int ffs_link(const char *from, const char *to)
{
	AS_CALLER;
	CHECK("link", to);
	return linkat(backing_fd, rel(from), backing_fd, rel(to), 0) == 0 ? 0 : -errno;
}

static int ffs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	AS_CALLER;
	CHECK("chmod", path);
	int r = fi ? fchmod((int)fi->fh, mode) : fchmodat(backing_fd, rel(path), mode, 0);
	return r == 0 ? 0 : -errno;
}

static int ffs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	AS_CALLER;
	CHECK("chown", path);
	int r = fi ? fchown((int)fi->fh, uid, gid)
		   : fchownat(backing_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
	return r == 0 ? 0 : -errno;
}

static int ffs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	AS_CALLER;
	CHECK("truncate", path);
	if (fi)
		return ftruncate((int)fi->fh, size) == 0 ? 0 : -errno;
	int fd = openat(backing_fd, rel(path), O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = ftruncate(fd, size) == 0 ? 0 : -errno;
	close(fd);
	return r;
}

static int ffs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	AS_CALLER;
	int r = fi ? futimens((int)fi->fh, tv)
		   : utimensat(backing_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW);
	return r == 0 ? 0 : -errno;
}

static void open_flags(const char *path, struct fuse_file_info *fi)
{
	fi->keep_cache = 0;
	if (options.direct_io || read_rule_active(path))
		fi->direct_io = 1;
}

static int ffs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	AS_CALLER;
	CHECK("create", path);
	int fd = openat(backing_fd, rel(path), fi->flags | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	open_flags(path, fi);
	return 0;
}

static int ffs_open(const char *path, struct fuse_file_info *fi)
{
	AS_CALLER;
	CHECK("open", path);
	/* O_DIRECT is not passed on: the backing filesystem may refuse it, and with
	 * keep_cache=0 / direct_io the bytes come from here anyway */
	int fd = openat(backing_fd, rel(path), (fi->flags & ~O_DIRECT) | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	open_flags(path, fi);
	return 0;
}

static int ffs_read(const char *path, char *buf, size_t size, off_t offset,
		    struct fuse_file_info *fi)
{
	int f = fault_at("read", path, NULL, offset, size);
	if (f)
		return f;
	ssize_t n = pread((int)fi->fh, buf, size, offset);
	if (n < 0)
		return -errno;
	flip(path, buf, (size_t)n, offset);
	return (int)n;
}

static int ffs_write(const char *path, const char *buf, size_t size, off_t offset,
		     struct fuse_file_info *fi)
{
	int f = fault_at("write", path, NULL, offset, size);
	if (f)
		return f;
	ssize_t n = pwrite((int)fi->fh, buf, size, offset);
	return n < 0 ? -errno : (int)n;
}

static int ffs_statfs(const char *path, struct statvfs *st)
{
	AS_CALLER;
	CHECK("statfs", path);
	return fstatvfs(backing_fd, st) == 0 ? 0 : -errno;
}

static int ffs_flush(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	/* what close(2) of one of the caller's descriptors does to the backing file */
	int fd = dup((int)fi->fh);
	if (fd < 0)
		return -errno;
	return close(fd) == 0 ? 0 : -errno;
}

static int ffs_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	close((int)fi->fh);
	return 0;
}

static int ffs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	CHECK("fsync", path);
	int r = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
	return r == 0 ? 0 : -errno;
}

static int ffs_fallocate(const char *path, int mode, off_t offset, off_t length,
			 struct fuse_file_info *fi)
{
	CHECK("fallocate", path);
	return fallocate((int)fi->fh, mode, offset, length) == 0 ? 0 : -errno;
}

static int ffs_access(const char *path, int mask)
{
	AS_CALLER;
	return faccessat(backing_fd, rel(path), mask, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

static off_t ffs_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
	(void)path;
	off_t r = lseek((int)fi->fh, off, whence);
	return r < 0 ? -errno : r;
}

static const struct fuse_operations operations = {
	.init = ffs_init,
	.getattr = ffs_getattr,
	.readlink = ffs_readlink,
	.opendir = ffs_opendir,
	.readdir = ffs_readdir,
	.releasedir = ffs_releasedir,
	.fsyncdir = ffs_fsyncdir,
	.mkdir = ffs_mkdir,
	.unlink = ffs_unlink,
	.rmdir = ffs_rmdir,
	.symlink = ffs_symlink,
	.rename = ffs_rename,
	.link = ffs_link,
	.chmod = ffs_chmod,
	.chown = ffs_chown,
	.truncate = ffs_truncate,
	.utimens = ffs_utimens,
	.create = ffs_create,
	.open = ffs_open,
	.read = ffs_read,
	.write = ffs_write,
	.statfs = ffs_statfs,
	.flush = ffs_flush,
	.release = ffs_release,
	.fsync = ffs_fsync,
	.fallocate = ffs_fallocate,
	.access = ffs_access,
	.lseek = ffs_lseek,
	/* no .flock / .lock: the kernel keeps flock and POSIX locks itself, which is
	 * right for one host */
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	if (argc < 3) {
		fprintf(stderr, "usage: %s BACKING MOUNTPOINT [fuse options]\n", argv[0]);
		return 2;
	}
	backing_path = argv[1];
	mount_path = argv[2];
	backing_fd = open(backing_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (backing_fd < 0) {
		perror(backing_path);
		return 1;
	}
	fuse_opt_add_arg(&args, argv[0]);
	fuse_opt_add_arg(&args, argv[2]);
	for (int i = 3; i < argc; i++)
		fuse_opt_add_arg(&args, argv[i]);
	if (fuse_opt_parse(&args, &options, option_spec, NULL) == -1)
		return 2;
	umask(0);
	int r = fuse_main(args.argc, args.argv, &operations, NULL);
	fuse_opt_free_args(&args);
	return r;
}
