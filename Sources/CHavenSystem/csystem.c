#define _GNU_SOURCE
#include <unistd.h>
#include "csystem.h"

#include <fcntl.h>

int haven_start_writeback(int fd, off_t offset, off_t length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}
