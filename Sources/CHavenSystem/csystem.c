#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>
#include "csystem.h"

int haven_syncfs(int fd) { return syncfs(fd); }

int haven_exit_with_parent(int parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) return -1;
    // The parent may have gone before the call: then the signal never comes.
    return getppid() == parent ? 0 : -1;
}

int haven_punch_hole(int fd, long long offset, long long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}

int haven_block_device_readonly(int fd) {
    int ro = 0;
    return ioctl(fd, BLKROGET, &ro) == 0 ? (ro != 0) : -1;
}

int haven_start_writeback(int fd, off_t offset, off_t length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}
