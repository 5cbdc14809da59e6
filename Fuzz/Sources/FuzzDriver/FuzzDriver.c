// The declaration is all this target adds; libFuzzer (linked by -sanitize=fuzzer) defines it.
#include "FuzzDriver.h"
