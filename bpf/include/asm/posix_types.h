/* See types.h in this directory. */
#pragma once
#include <asm-generic/posix_types.h>
