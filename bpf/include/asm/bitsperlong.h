/* BPF is a 64-bit target everywhere; see types.h in this directory. */
#pragma once
#include <asm-generic/bitsperlong.h>
