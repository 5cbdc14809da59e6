// libnbd, through which haven reads (and restores) disks: never a hand-written NBD client.
#ifndef HAVEN_CNBD_H
#define HAVEN_CNBD_H
#include <libnbd.h>
#endif
