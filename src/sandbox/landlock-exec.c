// landlock-exec: applies a Landlock ruleset to itself, then execs a command under it.
//   landlock-exec [--best-effort] [--ro PATH...] [--rw PATH...] -- CMD ARGS...
//   landlock-exec --abi   (prints the kernel's Landlock ABI, 0 without Landlock)
// --ro: read and execute beneath PATH; --rw: every handled right beneath PATH; everything
// else the kernel's ABI can handle is denied: all other filesystem access, TCP bind and
// connect (ABI >= 4, no rules), abstract unix sockets and signals out of the domain
// (ABI >= 6). A --ro/--rw PATH that does not exist is skipped (only stricter). Without
// Landlock in the kernel it fails closed (exit 126) unless --best-effort is given.
// Built by scripts/setup-system.ts (src/sandbox/landlock.ts); run inside the bwrap sandbox.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule 445
#define __NR_landlock_restrict_self 446
#endif

#define CREATE_RULESET_VERSION (1U << 0)
#define RULE_PATH_BENEATH 1

#define FS_EXECUTE (1ULL << 0)
#define FS_WRITE_FILE (1ULL << 1)
#define FS_READ_FILE (1ULL << 2)
#define FS_READ_DIR (1ULL << 3)
#define FS_REFER (1ULL << 13)
#define FS_TRUNCATE (1ULL << 14)
#define FS_IOCTL_DEV (1ULL << 15)
// rights that mean something on a file (the rest only on directories)
#define FS_FILE_RIGHTS (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV)
#define NET_BIND_TCP (1ULL << 0)
#define NET_CONNECT_TCP (1ULL << 1)
#define SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define SCOPE_SIGNAL (1ULL << 1)

struct ruleset_attr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};

struct path_beneath_attr {
  uint64_t allowed_access;
  int32_t parent_fd;
} __attribute__((packed));

static int die(const char *what) {
  fprintf(stderr, "landlock-exec: %s: %s\n", what, strerror(errno));
  return 126;
}

static int usage(void) {
  fprintf(stderr, "usage: landlock-exec [--best-effort] [--ro PATH...] [--rw PATH...] -- CMD ARGS...\n"
                  "       landlock-exec --abi\n");
  return 2;
}

static int add_path(int ruleset, const char *path, uint64_t access) {
  int fd = open(path, O_PATH | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return -1;
  }
  struct path_beneath_attr rule = {
    .allowed_access = S_ISDIR(st.st_mode) ? access : access & FS_FILE_RIGHTS,
    .parent_fd = fd,
  };
  long r = syscall(__NR_landlock_add_rule, ruleset, RULE_PATH_BENEATH, &rule, 0);
  int saved = errno;
  close(fd);
  errno = saved;
  return r == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--abi") == 0) {
    long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, CREATE_RULESET_VERSION);
    printf("%ld\n", abi < 0 ? 0 : abi);
    return 0;
  }
  int best_effort = 0;
  int cmd = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) {
      cmd = i + 1;
      break;
    }
    if (strcmp(argv[i], "--best-effort") == 0) best_effort = 1;
  }
  if (cmd == 0 || cmd >= argc) return usage();

  long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, CREATE_RULESET_VERSION);
  if (abi < 1) {
    if (!best_effort) {
      fprintf(stderr, "landlock-exec: the kernel has no Landlock (%s): refusing to run unrestricted "
                      "(--best-effort runs anyway)\n", strerror(errno));
      return 126;
    }
    fprintf(stderr, "landlock-exec: no Landlock in this kernel (%s): running without it\n", strerror(errno));
  } else {
    struct ruleset_attr attr = {0};
    size_t size = 8;
    attr.handled_access_fs = (1ULL << 13) - 1; // ABI 1: execute .. make_sym
    if (abi >= 2) attr.handled_access_fs |= FS_REFER;
    if (abi >= 3) attr.handled_access_fs |= FS_TRUNCATE;
    if (abi >= 5) attr.handled_access_fs |= FS_IOCTL_DEV;
    if (abi >= 4) {
      attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP;
      size = 16;
    }
    if (abi >= 6) {
      attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL;
      size = 24;
    }
    const uint64_t ro = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR;
    const uint64_t rw = attr.handled_access_fs;
    int ruleset = (int)syscall(__NR_landlock_create_ruleset, &attr, size, 0);
    if (ruleset < 0) return die("landlock_create_ruleset");
    uint64_t access = 0;
    for (int i = 1; i < cmd - 1; i++) {
      if (strcmp(argv[i], "--best-effort") == 0) continue;
      if (strcmp(argv[i], "--ro") == 0) access = ro;
      else if (strcmp(argv[i], "--rw") == 0) access = rw;
      else if (access == 0) return usage();
      else if (add_path(ruleset, argv[i], access) != 0) {
        fprintf(stderr, "landlock-exec: %s: %s\n", argv[i], strerror(errno));
        return 126;
      }
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return die("no_new_privs");
    if (syscall(__NR_landlock_restrict_self, ruleset, 0) != 0) return die("landlock_restrict_self");
    close(ruleset);
  }
  execvp(argv[cmd], argv + cmd);
  fprintf(stderr, "landlock-exec: %s: %s\n", argv[cmd], strerror(errno));
  return 127;
}
