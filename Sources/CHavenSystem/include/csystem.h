// Linux calls that Glibc's Swift overlay does not expose (they need _GNU_SOURCE or are variadic).
#ifndef HAVEN_CSYSTEM_H
#define HAVEN_CSYSTEM_H
#include <sys/types.h>
/// syncfs(2): flush every dirty page of the file system holding `fd`.
int haven_syncfs(int fd);
/// prctl(PR_SET_PDEATHSIG, SIGTERM), then a check that the parent is still `parent`: a child
/// that should not outlive the process that started it. 0 on success, -1 when the parent is gone.
int haven_exit_with_parent(int parent);
/// fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros afterwards; -1 when unsupported.
int haven_punch_hole(int fd, long long offset, long long length);
/// ioctl(BLKROGET): 1 when the block device is read-only (a VBD plugged RO), 0 when not, -1 on error.
int haven_block_device_readonly(int fd);
/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: start writing back a range, without waiting.
int haven_start_writeback(int fd, off_t offset, off_t length);
#endif
