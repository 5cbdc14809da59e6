/* libzstd is used through its header; this file gives SwiftPM a C target to link it. */
#include "czstd.h"
