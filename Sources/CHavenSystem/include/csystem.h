// Linux calls that Glibc's Swift overlay does not expose (they need _GNU_SOURCE).
#ifndef HAVEN_CSYSTEM_H
#define HAVEN_CSYSTEM_H
#include <sys/types.h>
/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: start writing back a range, without waiting.
int haven_start_writeback(int fd, off_t offset, off_t length);
#endif
