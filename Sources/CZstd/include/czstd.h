// libzstd for chunk compression.
#ifndef HAVEN_CZSTD_H
#define HAVEN_CZSTD_H
#include <zstd.h>
#endif
