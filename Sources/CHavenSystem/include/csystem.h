// Linux calls that Glibc's Swift overlay does not expose (they need _GNU_SOURCE).
#ifndef HAVEN_CSYSTEM_H
#define HAVEN_CSYSTEM_H
/// syncfs(2): flush every dirty page of the file system holding `fd`.
int haven_syncfs(int fd);
#endif
