/* <linux/types.h> wants the architecture's <asm/types.h>, which Debian keeps
 * under a multiarch directory; BPF has one integer model on every host. */
#pragma once
#include <asm-generic/int-ll64.h>
